"""tutti: a high-throughput batch routing engine for tool-orchestrating agents.

Run a table of tasks in this process::

    import pyarrow as pa
    import tutti

    engine = tutti.Engine("toolorchestra-sim")      # a bundled config, a path, TOML text or a dict
    tasks = pa.table({"id": ["q1", "q2"], "prompt": ["What is 2+2?", "Capital of France?"]})
    results = engine.run(tasks)                     # a pyarrow.Table, one row per task

or send it to a ``tutti serve`` with :class:`Client`, or across a Ray cluster with
:mod:`tutti.ray`.

Tasks have the columns of ``tutti run``'s task files: ``id`` and ``prompt`` (required),
``reference``, ``preference``, ``budget_usd``, ``max_turns``, ``metadata``, ``env``, ``user``,
``replay``; other columns are passed through to the results. Results have the columns of
``tutti run``'s Parquet output.
"""

import json
import os
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import pyarrow as pa

from . import _tutti
from ._errors import ConfigError, TaskError, TuttiError

__all__ = ["Engine", "Run", "Client", "TuttiError", "ConfigError", "TaskError", "PROFILES"]
__version__ = _tutti.__version__

#: The names of the bundled configs, usable as ``Engine(name)``.
PROFILES = tuple(_tutti.PROFILES)

Config = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def _config_source(config: Config):
    """(kind, text) for the native engine: a bundled name, a file, TOML text, or a dict."""
    if isinstance(config, Mapping):
        return "json", json.dumps(config)
    if isinstance(config, os.PathLike):
        return "path", os.fspath(config)
    if not isinstance(config, str):
        raise TypeError(
            "config must be a bundled config's name, a path, TOML text or a dict; "
            f"got {type(config).__name__}"
        )
    looks_like_a_path = os.sep in config or config.endswith(".toml") or os.path.exists(config)
    if config in PROFILES or not ("\n" in config or "=" in config or looks_like_a_path):
        return "profile", config
    if "\n" in config or ("=" in config and not os.path.exists(config)):
        return "toml", config
    return "path", config


def _arrow_stream(tasks: Any):
    """An object with ``__arrow_c_stream__`` for the tasks, without copying Arrow data: a
    pyarrow Table or RecordBatchReader (or anything speaking the Arrow PyCapsule interface) as
    it is; a RecordBatch, a pandas DataFrame or a list of dicts converted to a Table."""
    if hasattr(tasks, "__arrow_c_stream__") and not _is_pandas(tasks):
        return tasks
    if isinstance(tasks, pa.RecordBatch):
        return pa.Table.from_batches([tasks])
    if _is_pandas(tasks):
        return pa.Table.from_pandas(tasks, preserve_index=False)
    if isinstance(tasks, (list, tuple)):
        if not all(isinstance(t, Mapping) for t in tasks):
            raise TypeError("a list of tasks must hold dicts, one per task")
        return pa.Table.from_pylist(list(tasks))
    raise TypeError(
        "tasks must be a pyarrow Table or RecordBatchReader, a pandas DataFrame, or a list of "
        f"dicts; got {type(tasks).__name__}"
    )


def _is_pandas(obj: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(obj, pd.DataFrame)


def _want_progress(progress: Optional[bool]) -> bool:
    if progress is not None:
        return progress
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """A tqdm bar (``tqdm.auto``: a widget in notebooks) when tqdm is installed, plain lines on
    standard error otherwise."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
            print(f"tutti: {total} tasks ({done} already done)", file=sys.stderr)
        else:
            self.bar = tqdm(total=total, initial=done, unit="task", desc="tutti")

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print(f"tutti: {self.done}/{self.total} tasks done", file=sys.stderr)


class Run:
    """One run of an :class:`Engine`: iterating it yields the result batches as they are
    committed (``pyarrow.RecordBatch``, in completion order). Made by :meth:`Engine.run_iter`.

    Every task gets exactly one row, also when the run is cancelled: tasks that were live end
    with status ``cancelled``, and tasks not started are reported ``cancelled``.
    """

    def __init__(self, native: "_tutti._Run", progress: bool) -> None:
        self._native = native
        self._progress = _Progress(native.total, native.skipped) if progress else None
        self._summary: Optional[Dict[str, Any]] = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self._native:
                if self._progress is not None:
                    self._progress.advance(batch.num_rows)
                yield batch
        finally:
            if self._progress is not None:
                self._progress.close()
                self._progress = None

    @property
    def schema(self) -> pa.Schema:
        """The schema of the result batches (``tutti run``'s output schema for this input)."""
        return self._native.schema

    @property
    def total(self) -> int:
        """Tasks in the input."""
        return self._native.total

    def cancel(self) -> None:
        """Cancels the run; safe to call from any thread. Iteration goes on to the end: the
        remaining rows come back with status ``cancelled``."""
        self._native.cancel()

    def summary(self) -> Dict[str, Any]:
        """After the last batch: ``rows`` written to the output (when there is one), the
        ``report`` (statuses, turns, latencies, cost) and the engine's ``ledger``."""
        if self._summary is None:
            self._summary = json.loads(self._native.summary_json())
        return self._summary

    def to_table(self) -> pa.Table:
        """Every remaining batch, as one table."""
        return pa.Table.from_batches(list(self), schema=self.schema)


class Engine:
    """An engine built from a config, reused for any number of runs.

    Args:
        config: the name of a bundled config (see :data:`PROFILES`: ``"default"`` runs the
            reference model in-process, ``"toolorchestra-sim"`` is a simulated workload), the
            path of a TOML config file, TOML text, or a dict with the same keys.
        trajectories: keep each episode's messages in its result row (``trajectory``).

    Building the engine checks the config, reaches every server it names, and loads in-process
    models; a problem raises :class:`ConfigError` or :class:`TuttiError` here, before any task
    runs.
    """

    def __init__(self, config: Config = "default", *, trajectories: bool = True) -> None:
        kind, value = _config_source(config)
        self._native = _tutti._Engine(kind, value, trajectories)
        self._trajectories = trajectories
        if self._native.warnings:
            import warnings

            for w in self._native.warnings:
                warnings.warn(f"tutti: {w}", stacklevel=2)

    def run(
        self,
        tasks: Any,
        *,
        output: Optional[Union[str, "os.PathLike[str]"]] = None,
        resume: bool = False,
        progress: Optional[bool] = None,
    ) -> pa.Table:
        """Runs every task and returns one result row per task (``pyarrow.Table``, in
        completion order; ``input_index`` is each row's position in ``tasks``).

        Args:
            tasks: a ``pyarrow.Table`` or ``RecordBatchReader`` (passed through the Arrow C
                stream interface without a copy), a pandas DataFrame, or a list of dicts.
            output: also write the results to this Parquet or JSON Lines file, committed as
                they finish, exactly as ``tutti run -o OUTPUT`` does.
            resume: with ``output``, skip the tasks the output already has (an interrupted
                run continues).
            progress: show a progress bar; by default, when standard error is a terminal or in
                a notebook.

        Raises:
            TaskError: a task is invalid (the message names the row and column); nothing ran.
            TuttiError: the run stopped on an error (what was committed to ``output`` stays).
            KeyboardInterrupt: Ctrl-C; the run was cancelled first.
        """
        return self.run_iter(tasks, output=output, resume=resume, progress=progress).to_table()

    def run_iter(
        self,
        tasks: Any,
        *,
        output: Optional[Union[str, "os.PathLike[str]"]] = None,
        resume: bool = False,
        progress: Optional[bool] = None,
    ) -> Run:
        """Like :meth:`run`, but returns the :class:`Run` at once: iterate it for the result
        batches as they are committed. The tasks are validated before this returns."""
        stream = _arrow_stream(tasks)
        native = self._native.start(
            stream,
            None if output is None else os.fspath(output),
            resume,
            self._trajectories,
        )
        return Run(native, _want_progress(progress))

    def cancel(self) -> None:
        """Cancels every run of this engine; safe to call from any thread."""
        self._native.cancel()

    def ledger(self) -> Dict[str, Any]:
        """Tokens, calls, cache hits and dollars so far, in total and per backend."""
        return json.loads(self._native.ledger_json())


class Client:
    """A client of a ``tutti serve`` server (Arrow Flight).

    Args:
        url: ``grpc://HOST:PORT``, or ``grpc+tls://HOST:PORT`` for a server with TLS.
        token: the server's bearer token; by default the ``TUTTI_TOKEN`` variable, if set.
        tls_ca: for ``grpc+tls://``: a path to the PEM certificate of the authority that signed
            the server's certificate (the server's own when self-signed); by default the
            ``TUTTI_TLS_CA`` variable, if set.
    """

    def __init__(
        self,
        url: str = "grpc://127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        tls_ca: Optional[Union[str, "os.PathLike[str]"]] = None,
    ):
        if token is None:
            token = os.environ.get("TUTTI_TOKEN")
        if tls_ca is None:
            tls_ca = os.environ.get("TUTTI_TLS_CA")
        ca = None
        if tls_ca is not None:
            with open(tls_ca, "rb") as f:
                ca = f.read()
        self._native = _tutti._Client(url, token, ca)

    def submit(
        self,
        tasks: Any,
        *,
        name: Optional[str] = None,
        budget_usd: Optional[float] = None,
        max_turns: Optional[int] = None,
        preference: Optional[Mapping[str, float]] = None,
        trajectories: Optional[bool] = None,
    ) -> str:
        """Uploads ``tasks`` (as for :meth:`Engine.run`) as a job; returns its id once the
        server has them on disk. ``budget_usd``, ``max_turns`` and ``preference`` are defaults
        for tasks that leave them out."""
        defaults = {
            k: v
            for k, v in (
                ("budget_usd", budget_usd),
                ("max_turns", max_turns),
                ("preference", None if preference is None else dict(preference)),
            )
            if v is not None
        }
        spec: Dict[str, Any] = {"defaults": defaults}
        if name is not None:
            spec["name"] = name
        if trajectories is not None:
            spec["overrides"] = {"trajectories": trajectories}
        return self._native.submit(_arrow_stream(tasks), json.dumps(spec))

    def status(self, job: str) -> Dict[str, Any]:
        """The job's ``state``, ``progress``, ``tasks``, ``rows``, ``counts`` and cost."""
        return json.loads(self._native.status(job))

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job the server knows, oldest first."""
        return json.loads(self._native.jobs())

    def results(self, job: str) -> pa.Table:
        """The results written so far."""
        return self._native.results(job).read_all()

    def wait(self, job: str, *, poll_s: float = 0.25) -> Dict[str, Any]:
        """Waits until the job has ended; returns its final status."""
        import time

        while True:
            status = self.status(job)
            if status.get("state") not in ("queued", "running"):
                return status
            time.sleep(poll_s)

    def cancel(self, job: str) -> Dict[str, Any]:
        """Cancels the job: its unfinished tasks end ``cancelled``."""
        return json.loads(self._native.cancel(job))

    def stats(self, job: str) -> Dict[str, Any]:
        """The job's ledger: tokens, calls and dollars per backend."""
        return json.loads(self._native.stats(job))
