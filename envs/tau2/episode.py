"""Shared τ² code: load tasks, run one episode, build the SimulationRun, evaluate.

serve.py and gold.py both use Episode, so a WebSocket replay and a plain gold
replay build the trajectory the same way.
"""

import gc
import os
import sys
import threading
import time
import uuid
from copy import deepcopy
from datetime import datetime, timedelta
from functools import lru_cache

# τ² imports litellm, which otherwise tries to fetch a price list from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from loguru import logger  # noqa: E402

logger.remove()
logger.add(sys.stderr, level=os.environ.get("TAU2_LOG_LEVEL", "ERROR"))

from tau2.data_model.message import (  # noqa: E402
    AssistantMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from tau2.data_model.simulation import SimulationRun, TerminationReason  # noqa: E402
from tau2.data_model.tasks import Task  # noqa: E402
from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation  # noqa: E402
from tau2.registry import registry  # noqa: E402
from tau2.user.base import STOP  # noqa: E402
from tau2.user.user_simulator import UserSimulator  # noqa: E402
from tau2.utils.utils import format_time, get_now  # noqa: E402

DONE_TOOL = {
    "name": "done",
    "description": "End the conversation.",
    "parameters": {"type": "object", "properties": {}},
}


@lru_cache(maxsize=None)
def load_tasks(domain: str) -> dict[str, Task]:
    """The domain's default task set (for retail: the 'base' split, 114 tasks), by id."""
    tasks = registry.get_tasks_loader(domain)()
    return {t.id: t for t in tasks}


@lru_cache(maxsize=None)
def domain_info(domain: str) -> tuple[str, list[dict]]:
    """(policy text, agent tool schemas plus `done`) for a domain."""
    env = registry.get_env_constructor(domain)()
    tools = [dict(t.openai_schema["function"]) for t in env.get_tools()]
    return env.get_policy(), tools + [dict(DONE_TOOL)]


def user_scenario(task: Task) -> str:
    """The scenario text τ²'s user simulator gets as its instructions."""
    return str(task.user_scenario)


def gold_calls(task: Task) -> list[dict]:
    """The task's gold actions, then a message with every communicate_info string, then done."""
    crit = task.evaluation_criteria
    calls = []
    for a in (crit.actions or []) if crit else []:
        call = {"name": a.name, "arguments": a.arguments}
        if a.requestor != "assistant":
            call["requestor"] = a.requestor
        calls.append(call)
    info = (crit.communicate_info or []) if crit else []
    if info:
        calls.append({"name": "respond", "arguments": {"content": ", ".join(info)}})
    calls.append({"name": "done", "arguments": {}})
    return calls


def is_user_stop(content: str) -> bool:
    return UserSimulator.is_stop(UserMessage(role="user", content=content))


def evaluate(domain: str, task_id: str, simulation: SimulationRun):
    """evaluate_simulation(ALL) for a finished run. Module level, so a process pool can run it."""
    task = load_tasks(domain)[task_id]
    return evaluate_simulation(
        simulation, task, EvaluationType.ALL, solo_mode=False, domain=domain
    )


def tune_gc():
    """A τ² environment is ~10^5 Python objects. With the default thresholds the cyclic GC
    keeps rescanning every live one, which made building an environment 3-5x slower
    with a few hundred sessions open. Collect less often; freeze what is loaded now."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def worker_init(pid: int):
    """Process pool initializer: tune the GC, and leave when process `pid` (the server)
    is gone, even if it was killed. A forkserver worker cannot watch its own parent:
    that is the forkserver, which stays up as long as any worker does."""
    tune_gc()

    def alive() -> bool:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except ProcessLookupError:
            return False
        except OSError:
            return True

    def watch():
        while alive():
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


class Episode:
    """One τ² task in its own environment, with the trajectory tau2's orchestrator would record."""

    def __init__(self, domain: str, task_id: str):
        tasks = load_tasks(domain)
        if task_id not in tasks:
            raise ValueError(f"unknown task id {task_id!r} for domain {domain!r}")
        self.domain = domain
        self.task = tasks[task_id]
        self.env = registry.get_env_constructor(domain)()
        self.start_time = get_now()
        self.t0 = time.perf_counter()
        self.n_calls = 0
        self.done = False
        self.reward_info = None

        # Same steps as Orchestrator.initialize: copy the history, clear turn_idx,
        # timestamp it in the past, then set the environment state from it.
        init = self.task.initial_state
        history = deepcopy(init.message_history) if init and init.message_history else []
        offset = datetime.now() - timedelta(seconds=len(history))
        for i, msg in enumerate(history):
            msg.turn_idx = None
            msg.timestamp = format_time(offset + timedelta(seconds=i))
        self.env.set_state(
            initialization_data=init.initialization_data if init else None,
            initialization_actions=init.initialization_actions if init else None,
            message_history=history,
        )
        self.env.sync_tools()
        self.messages = list(history)

    def call_tool(self, name: str, arguments: dict, requestor: str = "assistant") -> ToolMessage:
        """Run a τ² tool. Errors come back as an error ToolMessage, as in tau2's runner."""
        self._check_open()
        self.n_calls += 1
        call = ToolCall(
            id=f"call_{self.n_calls}", name=name, arguments=arguments, requestor=requestor
        )
        cls = UserMessage if requestor == "user" else AssistantMessage
        self.messages.append(cls(role=requestor, content=None, tool_calls=[call]))
        result = self.env.get_response(call)
        self.messages.append(result)
        self.env.sync_tools()
        return result

    def say(self, role: str, content: str) -> bool:
        """Record a text message. True when it is a user stop message."""
        self._check_open()
        if role == "user":
            self.messages.append(UserMessage(role="user", content=content))
            return is_user_stop(content)
        self.messages.append(AssistantMessage(role="assistant", content=content))
        return False

    def finish(self, termination: TerminationReason, evaluator=None):
        """End the episode and score it with τ²'s evaluator. Returns the RewardInfo.
        `evaluator` replaces `evaluate` (serve.py runs it in a process pool)."""
        self._check_open()
        self.done = True
        if termination == TerminationReason.AGENT_STOP:
            # tau2's agents turn a `done` call into this message (their STOP_TOKEN).
            self.messages.append(AssistantMessage(role="assistant", content=STOP))
        simulation = self.simulation(termination)
        self.env = None  # the evaluator replays the trajectory in fresh environments
        self.reward_info = (evaluator or evaluate)(self.domain, self.task.id, simulation)
        return self.reward_info

    def simulation(self, termination: TerminationReason) -> SimulationRun:
        messages = []
        for i, msg in enumerate(self.messages):
            msg = deepcopy(msg)
            msg.turn_idx = i
            messages.append(msg)
        return SimulationRun(
            id=str(uuid.uuid4()),
            task_id=self.task.id,
            start_time=self.start_time,
            end_time=get_now(),
            duration=time.perf_counter() - self.t0,
            termination_reason=termination,
            messages=messages,
        )

    def _check_open(self):
        if self.done:
            raise RuntimeError("episode is done")
