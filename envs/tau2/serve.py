"""Serve one τ² domain as an OpenEnv environment (WebSocket /ws, one session per episode).

    python3 envs/tau2/serve.py --domain retail --listen 127.0.0.1:8000 [--max-sessions 4096]

Prints `listening on http://HOST:PORT` once it accepts connections (port 0 picks a free
port; the line names the real one). GET /sessions gives {"active", "opened", "closed"}.
See envs/README.md for the message shapes.
"""

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, Literal, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from episode import (  # noqa: E402
    Episode,
    TerminationReason,
    domain_info,
    evaluate,
    load_tasks,
    tune_gc,
    worker_init,
)

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from openenv.core.env_server.http_server import HTTPEnvServer  # noqa: E402
from openenv.core.env_server.interfaces import Environment  # noqa: E402
from openenv.core.env_server.types import Action, Observation, State  # noqa: E402
from pydantic import ConfigDict, field_validator  # noqa: E402
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected  # noqa: E402


class Tau2Action(Action):
    """call_tool / message / list_tools, sent as the `data` of a WS step message."""

    type: Literal["call_tool", "message", "list_tools"]
    tool_name: Optional[str] = None
    arguments: Dict[str, Any] = {}
    # Not in the base contract: lets a replay run τ²'s user-side tools (telecom).
    requestor: Literal["assistant", "user"] = "assistant"
    role: Optional[Literal["assistant", "user"]] = None
    content: Optional[str] = None

    @field_validator("arguments", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v


class Tau2Observation(Observation):
    """Free-form observation: the payload keys sit next to done/reward."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Tau2State(State):
    task_id: Optional[str] = None
    done: bool = False


# Sessions run in their own threads, and τ² work is pure Python. Many threads
# contending for the GIL starve the event loop (pongs, new connections), so
# τ² work in this process runs one session at a time.
CPU = threading.Lock()


class Tau2Environment(Environment):
    """One WebSocket session. The τ² environment is built at reset, not here:
    openenv also builds throwaway instances for GET /state and /metadata."""

    SUPPORTS_CONCURRENT_SESSIONS = True
    domain: str = ""  # set once at startup
    pool: Optional[ProcessPoolExecutor] = None  # evaluates off the GIL when set
    step_delay_s: float = 0.0  # simulated latency per step (--step-delay-ms), for tests

    def __init__(self):
        super().__init__()
        self.episode: Optional[Episode] = None
        self._state = Tau2State()

    def reset(self, seed=None, episode_id=None, task_id=None, **kwargs) -> Tau2Observation:
        if task_id is None:
            raise ValueError("reset needs data.task_id (a τ² task id)")
        task_id = str(task_id)
        with CPU:
            self.episode = Episode(self.domain, task_id)
        self._state = Tau2State(episode_id=episode_id or str(uuid.uuid4()), task_id=task_id)
        policy, tools = domain_info(self.domain)
        return Tau2Observation(task_id=task_id, tools=tools, policy=policy)

    def step(self, action: Tau2Action, timeout_s=None, **kwargs) -> Tau2Observation:
        if self.step_delay_s > 0:
            time.sleep(self.step_delay_s)
        ep = self.episode
        if ep is None:
            raise RuntimeError("no episode: send reset with data.task_id first")
        if ep.done:
            raise RuntimeError("episode is done: reset to start another")
        # Shape checks here, not in a pydantic validator: openenv cannot serialize
        # a validator's exception and would drop the connection.
        if action.type == "call_tool" and not action.tool_name:
            raise ValueError("call_tool needs tool_name")
        if action.type == "message" and (action.role is None or action.content is None):
            raise ValueError("message needs role and content")
        self._state.step_count += 1
        if action.type == "list_tools":
            return Tau2Observation(tools=domain_info(self.domain)[1])
        if action.type == "message":
            with CPU:
                stop = ep.say(action.role, action.content)
            if stop:
                return self._finish(TerminationReason.USER_STOP)
            return Tau2Observation(recorded=True)
        if action.tool_name == "done":
            return self._finish(TerminationReason.AGENT_STOP)
        with CPU:
            msg = ep.call_tool(action.tool_name, action.arguments, action.requestor)
        return Tau2Observation(
            tool_name=action.tool_name,
            result=msg.content,
            # τ² writes errors as "Error: <message>"; `error.message` is the part after it.
            error={"message": msg.content.removeprefix("Error: ")} if msg.error else None,
        )

    def _finish(self, termination: TerminationReason) -> Tau2Observation:
        self._state.done = True
        try:
            info = self.episode.finish(termination, evaluator=pooled_evaluate)
        except Exception as e:
            raise RuntimeError(f"τ² evaluation failed: {e}") from e
        return Tau2Observation(
            done=True,
            reward=info.reward,
            reward_info=info.model_dump(mode="json"),
            termination=termination.value,
        )

    @property
    def state(self) -> Tau2State:
        return self._state

    def close(self) -> None:
        self.episode = None


def pooled_evaluate(domain: str, task_id: str, simulation):
    """Run episode.evaluate in the process pool; in this process if there is none or it broke."""
    pool = Tau2Environment.pool
    if pool is not None:
        try:
            return pool.submit(evaluate, domain, task_id, simulation).result()
        except BrokenProcessPool:
            Tau2Environment.pool = None
    with CPU:
        return evaluate(domain, task_id, simulation)


def start_pool(domain: str, workers: int) -> ProcessPoolExecutor:
    """Evaluation workers, forked from a forkserver that has τ² imported already.
    They warm up in the background, so startup does not wait for them."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["episode"])
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=worker_init,
        initargs=(os.getpid(),),
    )

    def warm():
        for f in [pool.submit(load_tasks, domain) for _ in range(workers)]:
            f.result()

    threading.Thread(target=warm, daemon=True).start()
    return pool


class CountingServer(HTTPEnvServer):
    """HTTPEnvServer that also counts WebSocket sessions opened and closed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened = 0
        self.closed = 0

    async def _create_session(self):
        created = await super()._create_session()
        self.opened += 1
        return created

    async def _destroy_session(self, session_id: str) -> None:
        await super()._destroy_session(session_id)
        self.closed += 1


class QuietDisconnect:
    """openenv closes the socket (or sends an error) after the client went away;
    starlette then raises, and uvicorn would log each one as an error."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass


def build_app(domain: str, max_sessions: int) -> FastAPI:
    load_tasks(domain)  # fail early on a bad domain, and warm the caches
    domain_info(domain)
    Tau2Environment.domain = domain
    app = FastAPI(title=f"tau2 {domain}")
    server = CountingServer(
        Tau2Environment, Tau2Action, Tau2Observation, max_concurrent_envs=max_sessions
    )
    server.register_routes(app)

    @app.get("/sessions")
    async def sessions():
        # A session counts as active until its teardown has finished.
        active = max(server.active_sessions, server.opened - server.closed)
        return {"active": active, "opened": server.opened, "closed": server.closed}

    return app


class Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, which kills the
    process before the evaluation pool is shut down. Here a signal just ends serve()."""

    @contextlib.contextmanager
    def capture_signals(self):
        signals = (signal.SIGINT, signal.SIGTERM)
        old = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


async def serve(app: FastAPI, host: str, port: int) -> None:
    config = uvicorn.Config(
        QuietDisconnect(app),
        host=host.strip("[]"),
        port=port,
        log_level="warning",
        access_log=False,
        # No server pings: a client busy with a long model call may not answer in time.
        ws_ping_interval=None,
        ws_ping_timeout=None,
        backlog=4096,
        timeout_graceful_shutdown=5,
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            sys.exit("server failed to start")
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    print(f"listening on http://{host}:{bound[1]}", flush=True)
    await task


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", required=True)
    ap.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT (port 0: any free one)")
    ap.add_argument("--max-sessions", type=int, default=4096)
    ap.add_argument(
        "--eval-workers", type=int, default=max(1, min(8, len(os.sched_getaffinity(0)) - 1)),
        help="processes that run τ²'s evaluation (0: in the server process)",
    )
    ap.add_argument(
        "--step-delay-ms", type=float, default=0.0,
        help="SIMULATED latency added to every step (for tests that need a run to take a while)",
    )
    args = ap.parse_args()
    Tau2Environment.step_delay_s = args.step_delay_ms / 1000.0
    host, _, port = args.listen.rpartition(":")
    app = build_app(args.domain, args.max_sessions)
    tune_gc()
    if args.eval_workers > 0:
        Tau2Environment.pool = start_pool(args.domain, args.eval_workers)
    try:
        asyncio.run(serve(app, host or "127.0.0.1", int(port)))
    finally:
        if Tau2Environment.pool is not None:
            Tau2Environment.pool.shutdown(wait=True, cancel_futures=True)


if __name__ == "__main__":
    main()
