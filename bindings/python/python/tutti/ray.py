"""tutti on Ray Data: one engine per actor, reused across every batch the actor gets.

::

    import ray, tutti.ray

    ds = ray.data.read_parquet("tasks.parquet")
    results = tutti.ray.run(ds, "toolorchestra-sim", actors=4)   # a ray.data.Dataset

or, with your own ``map_batches`` call::

    ds.map_batches(tutti.ray.Orchestrate, fn_constructor_kwargs={"config": "toolorchestra-sim"},
                   batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=4))

Each batch is run to the end on the actor's engine and comes back as its result rows (the
columns of ``tutti run``'s output; ``input_index`` is the row's position in its batch).
Task ids must be unique across the dataset, as for any tutti run.
"""

from typing import Any, Mapping, Optional, Union

import pyarrow as pa

from . import Engine

__all__ = ["Orchestrate", "run"]


class Orchestrate:
    """A callable class for ``Dataset.map_batches(..., batch_format="pyarrow")``: builds one
    :class:`tutti.Engine` when the actor starts and runs each batch of tasks on it.

    Args:
        config: as for :class:`tutti.Engine` (a bundled config's name, a path, TOML text or a
            dict). A path must be readable on every node.
        trajectories: keep each episode's messages in its row.
    """

    def __init__(self, config: Union[str, Mapping[str, Any]] = "default", trajectories: bool = True):
        self.engine = Engine(config, trajectories=trajectories)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.engine.run(batch, progress=False)


def run(
    dataset: Any,
    config: Union[str, Mapping[str, Any]] = "default",
    *,
    actors: int = 1,
    batch_size: Optional[int] = 4096,
    num_cpus: float = 1,
    trajectories: bool = True,
):
    """Runs every task of ``dataset`` (a ``ray.data.Dataset`` of tasks) on a pool of ``actors``
    actors, each holding one engine; returns the dataset of result rows. Each actor takes
    ``num_cpus`` CPUs from the cluster."""
    import ray.data

    kwargs = dict(
        fn_constructor_kwargs={"config": config, "trajectories": trajectories},
        batch_format="pyarrow",
        batch_size=batch_size,
        num_cpus=num_cpus,
    )
    strategy = getattr(ray.data, "ActorPoolStrategy", None)
    if strategy is not None:
        return dataset.map_batches(Orchestrate, compute=strategy(size=actors), **kwargs)
    return dataset.map_batches(Orchestrate, concurrency=actors, **kwargs)
