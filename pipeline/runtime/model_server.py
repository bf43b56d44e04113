"""The GPU stage of a staged run: model actors that run TAD / TAU for many CPU workers, batching
same-size tiles from different images into one forward call.

    CPU workers (ActorPool)              model actors (one per GPU)
    read, decode, pad, tile  --tiles-->  batch same-shape tiles, one forward, split
    encode, search, write    <--tiles--

A single-stage actor does everything in sequence, so on a GPU the device idles while the actor
decodes and encodes. Here the CPU stages run on as many CPU workers as there are cores and the
model actor is fed by all of them at once; the number of CPU workers (each with at most `depth`
batches queued) and the model actor's request limit bound what is in flight, so memory stays flat.

The codec does not change: a CPU worker's pairs are bound to a model actor (`bind`), and tiling
then sends each tile's uint8 pixels there instead of running the module (`RemoteStep`). Outputs
are the same 8-bit levels as running the pair locally on the model actor's device (batching is
bit-identical in fp32: tests/codec/test_inference_options.py).

Failures: a model actor that dies is restarted by Ray (max_restarts); a request that was in
flight is asked again (workers.with_retries) once it is back, then fails the object whose tile it was (a
`failed_processing` row, as any codec failure).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError


class ModelServer:
    """Ray actor (async): loads pairs on its device as requests name them (model id + weights
    sha256, verified like every load); `run` answers one request of N tiles."""

    def __init__(self, model_ids: list[str], registry: str | None, gpus: float, cpus: float, max_batch: int = 16,
                 inference: dict | None = None):
        from pipeline.codec import InferenceOptions
        from pipeline.runtime.actor_pool import torch_device

        self.device = torch_device(gpus, cpus)
        self.registry, self.max_batch = registry, max_batch
        self.inference = InferenceOptions(**inference) if inference else None
        self.pairs: dict[tuple[str, str | None], object] = {}
        for m in model_ids:  # the run's known pairs now: a bad model fails before any work
            self._pair(m, None)
        self.pending: dict[tuple, list] = defaultdict(list)  # (model, sha, up, h, w) -> [(tiles, future)]
        self.draining = False
        self.started = time.monotonic()
        self.stats = {"requests": 0, "tiles": 0, "forwards": 0, "busy_s": 0.0}
        self.steps: dict = {}

    def _pair(self, model_id: str, sha256: str | None):
        from models.zoo import load_pair
        from pipeline.codec import configure

        key = (model_id, sha256)
        if key not in self.pairs:
            pair = load_pair(model_id, self.device, expected_sha256=sha256, registry=self.registry)
            self.pairs[key] = configure(pair, self.inference) if self.inference else pair
            self.pairs[(model_id, pair.weights_sha256)] = self.pairs[key]
        return self.pairs[key]

    def ready(self) -> dict:
        return {"node": ray.get_runtime_context().get_node_id(), "device": self.device}

    def _step(self, model_id: str, sha256: str, up: bool):
        from pipeline.codec import tiling

        key = (model_id, sha256, up)
        if key not in self.steps:
            self.steps[key] = tiling.step(self._pair(model_id, sha256), up)
        return self.steps[key]

    async def run(self, model_id: str, sha256: str, up: bool, tiles: np.ndarray) -> np.ndarray:
        """N x 3 x h x w uint8 -> N x 3 x h' x w' uint8: one scaling step of that pair."""
        future = asyncio.get_running_loop().create_future()
        self.pending[(model_id, sha256, up, *tiles.shape[2:])].append((tiles, future))
        self.stats["requests"] += 1
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run the largest group of same-shape requests as one batch, until none is left. The
        forward runs in a thread, so requests keep arriving (and grouping) meanwhile."""
        try:
            while self.pending:
                key = max(self.pending, key=lambda k: len(self.pending[k]))
                group, taken, n = self.pending[key], [], 0
                while group and (not taken or n + len(group[0][0]) <= self.max_batch):
                    taken.append(group.pop(0))
                    n += len(taken[-1][0])
                if not group:
                    del self.pending[key]
                try:
                    out = await asyncio.to_thread(self._forward, key[:3], [t for t, _ in taken])
                except Exception as exc:  # noqa: BLE001 - the requests fail, the server goes on
                    for _, fut in taken:
                        fut.set_exception(exc)
                    continue
                i = 0
                for tiles, fut in taken:
                    fut.set_result(out[i : i + len(tiles)])
                    i += len(tiles)
        finally:
            self.draining = False

    def _forward(self, step_key: tuple, parts: list[np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        x = torch.from_numpy(np.concatenate(parts))  # a writable copy (Ray's arguments are read-only)
        out = self._step(*step_key).run_uint8(x).numpy()  # back on the CPU: the GPU work is done
        self.stats["busy_s"] += time.perf_counter() - t0
        self.stats["forwards"] += 1
        self.stats["tiles"] += len(x)
        return out

    def report(self) -> dict:
        """Counters for the run stats: busy fraction of this actor's life, mean batch size."""
        alive = time.monotonic() - self.started
        s = self.stats
        return {**s, "node": ray.get_runtime_context().get_node_id(), "device": self.device, "alive_s": alive,
                "busy_fraction": s["busy_s"] / alive if alive else 0.0,
                "mean_batch": s["tiles"] / s["forwards"] if s["forwards"] else 0.0}


class RemoteStep:
    """What tiling uses for one scaling step (`pair`, `up`, `run_uint8`), answered by a model actor."""

    def __init__(self, server, pair, up: bool):
        self.server, self.pair, self.up = server, pair, up

    def run_uint8(self, x: torch.Tensor) -> torch.Tensor:
        from pipeline.runtime.retry import with_retries

        tiles = x.contiguous().numpy()

        def ask():
            ref = self.server.run.remote(self.pair.model_id, self.pair.weights_sha256, self.up, tiles)
            return torch.from_numpy(ray.get(ref).copy())  # Ray hands back read-only memory

        # a model actor that died is restarted by Ray: ask again once it had time to come back
        return with_retries(ask, "model actor call", transient=RayActorError, delay=1.0)


class Binding:
    """Attached to a pair (`pair.remote`): tiling.step asks it for the steps instead of the module."""

    def __init__(self, server):
        self.server = server

    def step(self, pair, up: bool) -> RemoteStep:
        return RemoteStep(self.server, pair, up)


def bind(pair, server):
    """Send `pair`'s forward passes to the model actor `server` (which loads the same weights,
    sha256-checked). Returns the pair."""
    pair.remote = Binding(server)
    return pair


def start_servers(model_ids: list[str], registry: str | None, count: int, gpus: float, cpus: float,
                  resources: dict | None, name: str, max_batch: int, inference: dict | None) -> list:
    """`count` model actors (restarted by Ray if they die), ready when this returns."""
    cls = ray.remote(ModelServer)
    servers = [cls.options(name=f"{name}-model-{i}", num_gpus=gpus, num_cpus=cpus, resources=resources or None,
                           max_restarts=-1, max_task_retries=0, max_concurrency=256)
               .remote(model_ids, registry, gpus, cpus, max_batch, inference) for i in range(count)]
    ray.get([s.ready.remote() for s in servers])
    return servers
