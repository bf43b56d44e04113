"""The cost report: billing minimums and payback arithmetic on hand-computed cases, the price table a
user overrides by file (and a wrong file's error), the run's aggregation, and a real run's summary."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from pipeline.codec.options import CompressRecord
from pipeline.jobs.params import CompressArchiveParams
from pipeline.jobs.compress import RunStats, gpu_seconds_held, run_compress, summary_table
from pipeline.jobs.prices import (DEFAULT_PRICES, PriceTableError, Prices, StorageClass, billable_bytes, load_prices,
                             payback_months)
from pipeline.manifest.rows import ArchiveRows
from pipeline.storage.keys import ObjectInfo

# round numbers, so the expected values below can be checked by hand
PRICES = Prices(as_of="test", bytes_per_gb=10**9, vcpu_hour=0.036, gpu_hour=3.6, storage={
    "hot": StorageClass(gb_month=0.02, put_per_1000=0.005),
    "cold": StorageClass(gb_month=0.01, min_object_bytes=128 * 1024, put_per_1000=0.01),
})


def test_every_object_is_billed_at_least_the_minimum():
    cold, hot = PRICES.storage["cold"], PRICES.storage["hot"]
    assert billable_bytes([10, 200_000], cold) == 131_072 + 200_000
    assert billable_bytes(10, cold) == 131_072 and billable_bytes(10, hot) == 10
    assert billable_bytes([], cold) == 0


def test_payback_on_a_hand_computed_case():
    # 3 MB source -> 100 kB small file + 900 kB layer (2 PUTs), 100 CPU-s
    # hot: saves 2 MB = 0.002 GB x $0.02 = $4e-5 a month; costs 100/3600 h x $0.036 = $0.001 + 2 PUTs x $0.005/1000
    assert payback_months(3_000_000, [100_000, 900_000], 2, 100, PRICES, "hot") == pytest.approx(0.00101 / 4e-5)
    # + 10 GPU-s at $3.6/h = $0.01
    assert payback_months(3_000_000, [100_000, 900_000], 2, 100, PRICES, "hot", gpu_seconds=10) == pytest.approx(
        0.01101 / 4e-5)
    # cold: the small file is billed as 131,072 B; PUTs at $0.01/1000
    saving = (3_000_000 - 131_072 - 900_000) / 1e9 * 0.01
    assert payback_months(3_000_000, [100_000, 900_000], 2, 100, PRICES, "cold") == pytest.approx(0.00102 / saving)


def test_nothing_saved_never_pays_back():
    assert payback_months(1_000, [900, 200], 2, 1.0, PRICES, "hot") == math.inf  # bigger than the source
    # smaller in bytes, bigger in bills: two objects under the minimum cost two minimums, the source one
    assert payback_months(50_000, [20_000, 10_000], 2, 1.0, PRICES, "cold") == math.inf
    assert payback_months(50_000, [20_000, 10_000], 2, 1.0, PRICES, "hot") < math.inf


def test_default_table_is_the_cited_list_prices():
    p = DEFAULT_PRICES
    assert (p.storage["standard"].gb_month, p.storage["standard_ia"].gb_month, p.storage["glacier_ir"].gb_month) == (
        0.023, 0.0125, 0.004)
    assert [p.storage[k].put_per_1000 for k in ("standard", "standard_ia", "glacier_ir")] == [0.005, 0.01, 0.02]
    assert [p.storage[k].min_object_bytes for k in ("standard", "standard_ia", "glacier_ir")] == [0, 131_072, 131_072]
    with pytest.raises(PriceTableError, match="no storage class 'deep_archive'"):
        payback_months(1, 1, 1, 1.0, p, "deep_archive")


def test_a_price_file_overrides_the_built_in_table(tmp_path):
    toml = tmp_path / "prices.toml"
    toml.write_text('as_of = "2026-12-01"\nvcpu_hour = 0.05\n[storage.standard]\ngb_month = 0.02\n'
                    '[storage.onezone_ia]\nname = "S3 One Zone-IA"\ngb_month = 0.01\nmin_object_bytes = 131072\n'
                    'put_per_1000 = 0.01\n')
    p = load_prices(str(toml))
    assert (p.as_of, p.vcpu_hour, p.gpu_hour) == ("2026-12-01", 0.05, DEFAULT_PRICES.gpu_hour)
    assert p.storage["standard"].gb_month == 0.02 and p.storage["standard"].put_per_1000 == 0.005  # the rest kept
    assert p.storage["onezone_ia"].min_object_bytes == 131_072 and set(p.storage) >= {"standard_ia", "glacier_ir"}
    js = tmp_path / "prices.json"
    js.write_text(json.dumps({"gpu_hour": 2.5}))
    assert load_prices(str(js)).gpu_hour == 2.5
    assert load_prices(None) is DEFAULT_PRICES


def test_the_run_parameter_wins_over_the_setting(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text('{"vcpu_hour": 1.0}')
    (tmp_path / "b.json").write_text('{"vcpu_hour": 2.0}')
    monkeypatch.setenv("TAID_PRICES", str(tmp_path / "a.json"))
    params = CompressArchiveParams(source=str(tmp_path), dest=str(tmp_path / "d"))
    assert params.prices_source == str(tmp_path / "a.json") and params.price_table().vcpu_hour == 1.0
    params = params.model_copy(update={"prices": str(tmp_path / "b.json")})
    assert params.price_table().vcpu_hour == 2.0


@pytest.mark.parametrize("text, name, message", [
    ('{"vcpu_hour": -1}', "p.json", r"vcpu_hour: Input should be greater than or equal to 0"),
    ('{"vcpu_hours": 0.04}', "p.json", r"vcpu_hours: Extra inputs are not permitted"),  # a typo is not ignored
    ('{"storage": {"standard": {"gb_month": "cheap"}}}', "p.json", r"storage.standard.gb_month: Input should be"),
    ("vcpu_hour = ", "p.toml", r"not valid TOML"),
    ("[0.04]", "p.json", r"expected a table of prices"),
])
def test_a_wrong_price_file_says_which_and_what(tmp_path, text, name, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(PriceTableError, match=message) as err:
        load_prices(str(tmp_path / name))
    assert str(tmp_path / name) in str(err.value)


def test_a_missing_price_file_fails_the_run_before_any_work(tmp_path):
    params = CompressArchiveParams(source=str(tmp_path), dest=str(tmp_path / "archive"),
                                   prices=str(tmp_path / "nowhere.toml"))
    with pytest.raises(PriceTableError, match=r"nowhere.toml: cannot read it"):
        run_compress(params)
    assert not (tmp_path / "archive").exists()


def _row(rows, key, status, size, w, small, layer=None, **cpu):
    obj = ObjectInfo(key=key, uri=f"file:///src/{key}", etag="e", size=size)
    rec = CompressRecord(source_size=size, width=w, height=w, status=status, output_size=small,
                         enhancement_size=layer, **cpu)
    if status == "ok":
        return rows.ok(obj, 1, rec, f"file:///dest/{key}.webp", f"file:///dest/{key}.webp.enh" if layer else None)
    return rows.failed(obj, 1, status, "missed its target", rec)


def test_run_stats_add_up_stages_objects_and_bills():
    rows = ArchiveRows("r", {"model_id": None, "fidelity": "standard", "target_psnr": 36.0}, "test")
    stats = RunStats(PRICES, "prices.toml")
    stats.add(_row(rows, "a.jpg", "ok", 3_000_000, 1000, 100_000, 900_000, cpu_decode_s=1.0, cpu_search_s=60.0))
    stats.add(_row(rows, "b.jpg", "ok", 200_000, 500, 50_000, None, cpu_decode_s=0.5, cpu_tad_s=2.0))
    stats.add(_row(rows, "c.jpg", "failed_fidelity", 100_000, 500, None, None, cpu_decode_s=0.5, cpu_search_s=36.0))
    cost = stats.summary(run_objects=2)
    assert cost["cpu_s"] == {"decode": 2.0, "tad": 2.0, "tau": None, "search": 96.0, "encode": None, "verify": None,
                             "total": 100.0}
    assert cost["cpu_s_per_mp"]["total"] == pytest.approx(100.0 / 1.5)  # 1 + 0.25 + 0.25 MP decoded
    assert (cost["objects_written"], cost["objects_per_image"], cost["run_objects"]) == (3, 1.5, 2)
    cold = cost["payback"]["cold"]
    assert (cold["billable_source_bytes"], cold["billable_stored_bytes"]) == (3_200_000, 131_072 + 900_000 + 131_072)
    # the run's totals through the pure function: 3 objects + 2 of the run's own, all 100 CPU-s
    assert cold["months"] == pytest.approx(payback_months(
        [3_000_000, 200_000], [100_000, 900_000, 50_000], 5, 100.0, PRICES, "cold"))
    result = {"plan": {}, "dispatch": {"actor_restarts": 0}, **cost}
    table = {r["metric"]: r["value"] for r in summary_table(result)}
    assert table["CPU-s per MP: tau"] == "not measured" and table["objects written per image"] == 1.5
    assert table["payback months: cold"] == f"{cold['months']:.2f}" and table["prices"].startswith("prices.toml")


def test_gpu_seconds_are_what_the_run_held():
    params = CompressArchiveParams(source="s", dest="d", workers=3)
    staged = {"gpus_per_worker": 0.0, "model_actors": [{"device": "cuda:0", "alive_s": 100.0},
                                                        {"device": "cuda:0", "alive_s": 90.0},
                                                        {"device": "cpu", "alive_s": 100.0}]}
    assert gpu_seconds_held(staged, params, 120.0) == 190.0  # CUDA model actors, one GPU each by default
    assert gpu_seconds_held(staged, params.model_copy(update={"gpus_per_model_actor": 0.5}), 120.0) == 95.0
    assert gpu_seconds_held({"gpus_per_worker": 0.25}, params, 120.0) == 0.25 * 3 * 120.0  # single stage: the shares
    assert gpu_seconds_held({"gpus_per_worker": 0.0}, params, 120.0) == 0.0
    assert gpu_seconds_held({"actor_restarts": 0, "batches": 0}, params, 1.0) == 0.0  # nothing dispatched


def _png(seed: int, size: int) -> bytes:
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=2)
    img = np.clip(img + np.random.default_rng(seed).integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_a_run_reports_its_cost(tmp_path, ray_local):
    src, dest = tmp_path / "src", tmp_path / "archive"
    src.mkdir()
    for i in range(3):
        (src / f"img-{i}.png").write_bytes(_png(i, 64 + 8 * i))
    (tmp_path / "prices.json").write_text('{"as_of": "2026-12-06", "vcpu_hour": 0.05}')
    params = CompressArchiveParams(source=str(src), dest=str(dest), model_id="taid-x4", workers=1,
                                   prices=str(tmp_path / "prices.json"))
    result = run_compress(params)  # a fixed single layer: no search, no layer
    assert result["by_status"] == {"ok": 3}
    assert result["cpu_s"]["decode"] > 0 and result["cpu_s_per_mp"]["decode"] > 0
    assert (result["objects_written"], result["objects_per_image"], result["run_objects"]) == (3, 1.0, 2)
    assert set(result["payback"]) == {"standard", "standard_ia", "glacier_ir"}
    assert result["prices"] == {"source": str(tmp_path / "prices.json"), "as_of": "2026-12-06", "region": "us-east-1",
                                "currency": "USD"}
    # small PNGs: the S3 Standard bill shrinks; in the 128 KiB-minimum classes nothing is saved
    assert result["payback"]["standard"]["saving_per_month"] > 0 and result["payback"]["standard"]["months"] > 0
    assert result["payback"]["standard_ia"]["months"] is None
    table = {r["metric"]: r["value"] for r in summary_table(result)}
    assert table["payback months: S3 Standard-IA"] == "never (nothing saved)"
    assert isinstance(table["CPU-s per MP: decode"], float) and table["objects written per image"] == 1.0
    stats = json.loads((dest / "_runs" / f"{result['run_id']}.json").read_text())
    assert stats["payback"]["standard"]["months"] == pytest.approx(result["payback"]["standard"]["months"])
    rows = ds.dataset(str(dest / "_manifest"), format="parquet", partitioning="hive").to_table().to_pylist()
    assert all(r["cpu_decode_s"] > 0 for r in rows)
