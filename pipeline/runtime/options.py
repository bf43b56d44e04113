"""How a job runs on Ray: actors, resources, stages and the networks' numeric options."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipeline.codec import InferenceOptions


class RayParams(BaseModel):
    """How a job runs on Ray: the same knobs for compress and rehydrate (docs/architecture.md).

    Single stage: `workers` actors each read, decode, run the model and encode in sequence (on a
    GPU share when `gpus_per_worker` asks for one). Staged: `workers` CPU actors read, decode,
    encode and write, and `model_actors` model actors (one per GPU by default) run the networks for
    all of them, batching same-size tiles across images (pipeline/runtime/model_server.py)."""

    ray_address: str = Field("", description="Ray cluster address; empty = the TAID_RAY_ADDRESS setting, else a "
                             "local Ray")
    workers: int = Field(2, ge=1, description="number of Ray actors (the CPU workers when staged)")
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float | None = Field(
        None, ge=0, description="single stage: None = automatic (a GPU share per actor when the cluster has GPUs, "
        "else CPU); 0 = CPU")
    actor_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per model actor (e.g. {'taid_model': 1}: only the "
        "nodes started with that resource run the model)")
    max_attempts: int = Field(3, ge=1, description="tries per object across actor crashes")
    batch_size: int = Field(2, ge=1, description="items per actor call (compress and rehydrate alike: a call costs "
                            "milliseconds against an image's seconds, and small batches spread a run's last items "
                            "over the actors and cost fewer items an attempt when an actor crashes)")
    batch_bytes: int | None = Field(
        1 << 20, ge=0, description="a batch also ends at this many source bytes, and an actor with this many bytes "
        "queued takes no more until it finishes one (large images go one at a time, to whichever actor frees up "
        "first); 0 or None = by count only")
    largest_first: int = Field(
        1000, ge=0, description="hand out the objects of each window of this many listed objects largest first "
        "(longest processing time first: the run ends on small images, not on a large one while the other actors "
        "idle); 0 = listing order")
    in_process: Literal["auto", "always", "never"] = Field(
        "auto", description="run the workers in this process instead of on Ray: always, never, or auto = when no "
        "cluster address is given and the plan is small (in_process_max_items, in_process_max_bytes): starting "
        "a local Ray costs more than it saves there (docs/costs.md#small-runs)")
    start_on_driver: bool | None = Field(
        None, description="the driver works on the first objects (one at a time) until the actors are ready; None = "
        "auto: on a cluster it connects to (the actors start on other cores), not while it starts a local Ray "
        "(measured on 2 cores: the driver's work slowed Ray's own start more than it did: docs/costs.md)")
    in_process_max_items: int = Field(2, ge=0, description="auto: at most this many objects to process ...")
    in_process_max_bytes: int = Field(3 << 20, ge=0, description="... and at most this many source bytes in all")
    registry: str | None = Field(None, description="model registry URI for fine-tuned model ids (default: the "
                                 "TAID_MODEL_REGISTRY setting)")
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="staged: custom Ray resources per CPU worker (e.g. to keep them on nodes "
        "near the storage); single stage: unused (actor_resources)")
    stages: Literal["auto", "single", "staged"] = Field(
        "auto", description="staged (CPU workers + model actors) or single-stage actors; auto = staged when the "
        "cluster has GPUs")
    model_actors: int | None = Field(None, ge=1, description="staged: model actors (default: one per GPU, else 1)")
    gpus_per_model_actor: float | None = Field(None, ge=0, description="staged: default 1 when the cluster has "
                                               "GPUs, else 0")
    tile_batch: int = Field(16, ge=1, description="staged: tiles per forward call of a model actor")
    inference: InferenceOptions | None = Field(
        None, description="precision / layout / compile of the networks; None = the TAID_PRECISION setting, else "
        "fp32 on a CPU and bf16 on CUDA (pipeline/codec/inference.py)")
