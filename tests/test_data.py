"""rglcd.data: built-in photos and prompts, transforms, prep validation, readers and the training stream."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from rglcd.config import load_config
from rglcd.data import StreamSpec, TrainStream, load_prompts, open_source, photo_record, photos, prep, vbench_prompts
from rglcd.data.images import to_training_tensor
from rglcd.data.manifest import DROP_REASONS
from rglcd.data.stream import global_records


def _cfg(model_cache, *overrides):
    return load_config("tiny-random", overrides=[f"model.cache_dir={model_cache}", "data.shard_size=8", *overrides])


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _noise_image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def prepped(model_cache, tmp_path_factory):
    """builtin:photos:20 prepped twice: images only, and with precomputed latents (3 shards of <= 8 each)."""
    root = tmp_path_factory.mktemp("prepped")
    plain = prep(_cfg(model_cache), "builtin:photos:20", root / "plain")
    latent = prep(_cfg(model_cache, "data.precompute_latents=true"), "builtin:photos:20", root / "latent")
    return root, plain, latent


# ---------------------------------------------------------------- built-in data

def test_builtin_photos_are_real_captioned_and_expanded_deterministically():
    base = photos()
    assert len(base) == 11
    for image, caption in base:
        assert image.mode == "RGB" and min(image.size) >= 300 and caption.strip()
    assert base[1][1] == "Chelsea the cat."
    first, caption = photo_record(1)
    assert np.array_equal(np.asarray(first), np.asarray(base[1][0])) and caption == "Chelsea the cat."
    crop_a, crop_b, other = photo_record(12), photo_record(12), photo_record(23)
    assert np.array_equal(np.asarray(crop_a[0]), np.asarray(crop_b[0]))       # same seed, same crop
    assert crop_a[1] == other[1] == "Chelsea the cat."                          # 12 and 23 are both photo 1
    assert crop_a[0].size != other[0].size or not np.array_equal(np.asarray(crop_a[0]), np.asarray(other[0]))
    assert crop_a[0].size[0] == crop_a[0].size[1] >= 0.55 * 300


def test_vbench_prompts_and_prompt_files(tmp_path):
    prompts = vbench_prompts()
    assert len(prompts) > 900 and len(set(prompts)) == len(prompts) and all(p.strip() == p for p in prompts)
    assert load_prompts("builtin:vbench") == prompts
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.json").write_text(json.dumps(["x", {"prompt": "y"}]))
    assert load_prompts(str(tmp_path / "p.txt")) == ["a cat", "a dog"]
    assert load_prompts(str(tmp_path / "p.json")) == ["x", "y"]
    with pytest.raises(ValueError, match="builtin:vbench"):
        load_prompts("builtin:parti")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompts(str(tmp_path / "nope.txt"))
    # every error names the setting the spec came from, once; broken JSON is a ValueError, not a traceback
    (tmp_path / "broken.json").write_text("[\"x\",")
    with pytest.raises(ValueError, match=r"^eval.prompts: .*broken.json' is not valid JSON"):
        load_prompts(tmp_path / "broken.json", field="eval.prompts")
    (tmp_path / "dict.json").write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(ValueError, match=r"^--prompts-file: .*expected a JSON list of strings"):
        load_prompts(tmp_path / "dict.json", field="--prompts-file")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"^data.prompts: .*holds no prompts$"):
        load_prompts(tmp_path / "empty.txt")


# ---------------------------------------------------------------- the resolution transform

def test_transform_resizes_shorter_side_crops_and_scales():
    left_white = np.zeros((20, 40, 3), np.uint8)
    left_white[:, :20] = 255                               # 40 wide x 20 high: left half white
    x = to_training_tensor(Image.fromarray(left_white), 10)  # -> 20 x 10, centre crop columns 5..14
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32
    assert torch.equal(x[:, :, :4], torch.ones(3, 10, 4))    # white -> +1 exactly
    assert torch.equal(x[:, :, 6:], -torch.ones(3, 10, 4))   # black -> -1 exactly
    crops = {tuple(to_training_tensor(Image.fromarray(left_white), 10, np.random.default_rng(s))[0, 0].tolist())
             for s in range(20)}
    assert len(crops) > 3                                    # random crops move
    again = to_training_tensor(Image.fromarray(left_white), 10, np.random.default_rng(3))
    assert torch.equal(again, to_training_tensor(Image.fromarray(left_white), 10, np.random.default_rng(3)))


# ---------------------------------------------------------------- prep: validation and counts

def _folder_with_bad_records(folder):
    folder.mkdir()
    good = [_noise_image(i) for i in range(4)]
    for i, arr in enumerate(good):
        (folder / f"good{i}.png").write_bytes(_png(arr))
        (folder / f"good{i}.txt").write_text(f"a picture number {i}")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "corrupt.txt").write_text("corrupt")
    (folder / "truncated.jpg").write_bytes(_png(_noise_image(9), "JPEG")[:300])
    (folder / "truncated.txt").write_text("cut short")
    (folder / "empty.png").write_bytes(_png(_noise_image(10)))
    (folder / "empty.txt").write_text("   \n")
    (folder / "nocaption.png").write_bytes(_png(_noise_image(11)))
    (folder / "zdup.bmp").write_bytes(_png(good[0], "BMP"))    # same pixels as good0.png, other format
    (folder / "zdup.txt").write_text("a duplicate")
    (folder / "tiny.png").write_bytes(_png(_noise_image(12, 20, 64)))
    (folder / "tiny.txt").write_text("too small")
    (folder / "long.png").write_bytes(_png(_noise_image(13)))
    (folder / "long.txt").write_text("word " * 200)


def test_prep_drops_and_counts_bad_records(model_cache, tmp_path):
    _folder_with_bad_records(tmp_path / "src")
    cfg = _cfg(model_cache)
    manifest = prep(cfg, str(tmp_path / "src"), tmp_path / "out")
    assert manifest["num_records"] == 4 and manifest["seen"] == 11
    assert {k: v for k, v in manifest["dropped"].items() if v} == {"corrupt_image": 2, "too_small": 1,
                                                                   "empty_caption": 2, "caption_too_long": 1,
                                                                   "duplicate": 1}
    assert sorted(manifest["dropped"]) == sorted(DROP_REASONS)
    assert sorted(r["reason"] for r in manifest["rejects"]) == sorted(
        ["corrupt_image"] * 2 + ["too_small", "empty_caption", "empty_caption", "caption_too_long", "duplicate"])
    assert all(r["key"].startswith(str(tmp_path / "src")) for r in manifest["rejects"])
    assert manifest["latents"] == {"precomputed": False}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "shard-000000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]        # no temp dir beside it
    again = prep(cfg, str(tmp_path / "src"), tmp_path / "out")                  # re-prep replaces, same hash
    assert again["content_hash"] == manifest["content_hash"]
    records = list(open_source(str(tmp_path / "out")).read_unit(0))
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert [r.caption for r in records] == [f"a picture number {i}" for i in range(4)]


def test_prep_with_nothing_valid_is_a_clear_error_and_writes_nothing(model_cache, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"no valid records among 1 seen .*corrupt_image"):
        prep(_cfg(model_cache), str(tmp_path / "src"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and len(list(tmp_path.iterdir())) == 1


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_prep_of_truncated_shards_keeps_what_precedes_the_cut(model_cache, tmp_path):
    samples = [(f"s{i:03d}", {"png": _png(_noise_image(i)), "txt": f"caption {i}".encode()}) for i in range(6)]
    _write_tar(tmp_path / "a.tar", samples[:3])
    _write_tar(tmp_path / "b.tar", samples[3:])
    data = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2])                    # cut inside the 2nd sample
    manifest = prep(_cfg(model_cache), str(tmp_path), tmp_path / "out")
    assert manifest["dropped"]["truncated"] == 1
    assert manifest["num_records"] == 4                                         # 3 from a.tar, 1 from b.tar
    captions = [r.caption for r in open_source(str(tmp_path / "out")).read_unit(0)]
    assert captions == ["caption 0", "caption 1", "caption 2", "caption 3"]
    with pytest.raises(ValueError, match="b.tar: unreadable or truncated"):
        list(open_source(str(tmp_path / "b.tar")).read_unit(0))                 # training refuses it


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_prep_from_tables_with_relative_paths(model_cache, tmp_path, fmt):
    import pandas as pd

    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(_noise_image(i)))
    frame = pd.DataFrame({"image_path": ["img/0.png", "img/1.png", "img/missing.png", "img/2.png"],
                          "caption": ["zero", "one", "gone", "two"]})
    table = tmp_path / f"table.{fmt}"
    {"jsonl": lambda: frame.to_json(table, orient="records", lines=True),
     "csv": lambda: frame.to_csv(table, index=False), "parquet": lambda: frame.to_parquet(table)}[fmt]()
    manifest = prep(_cfg(model_cache), str(table), tmp_path / "out")
    assert manifest["num_records"] == 3 and manifest["dropped"]["missing_image"] == 1
    assert [r.caption for r in open_source(str(tmp_path / "out")).read_unit(0)] == ["zero", "one", "two"]


def test_table_without_a_caption_column_names_the_allowed_columns(tmp_path):
    (tmp_path / "t.csv").write_text("image,label\na.png,x\n")
    with pytest.raises(ValueError, match="no caption column; allowed names: caption, text, prompt"):
        open_source(str(tmp_path / "t.csv"))


# ---------------------------------------------------------------- latents: only when the manifest says so

def test_latent_shards_are_read_only_when_the_manifest_says_so(prepped, tmp_path):
    root, plain, latent = prepped
    assert latent["latents"]["precomputed"] and latent["latents"]["shape"] == [8, 16, 16]
    assert plain["content_hash"] != latent["content_hash"]
    spec = StreamSpec(batch_size=4, resolution=32, seed=0, random_crop=False)
    batch = next(iter(TrainStream(open_source(str(root / "latent")), spec)))
    assert batch["latent_moments"].shape == (4, 8, 16, 16) and "pixel_values" not in batch
    # The same shards without their manifest are image shards: never guessed from the folder.
    (tmp_path / "copy").mkdir()
    for shard in latent["shards"]:
        (tmp_path / "copy" / shard["name"]).write_bytes((root / "latent" / shard["name"]).read_bytes())
    batch = next(iter(TrainStream(open_source(str(tmp_path / "copy")), spec)))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and "latent_moments" not in batch


def test_latents_path_gives_the_same_loss_as_encoding_on_the_fly(prepped, model_cache):
    from rglcd.models import load_teacher, make_student, make_target
    from rglcd.step import lcd_step

    root, _, _ = prepped
    cfg = _cfg(model_cache, "reward.name=none", "reward.guidance=direct")
    teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir)
    torch.manual_seed(0)
    student = make_student(teacher.unet, cfg.model.time_cond_proj_dim)
    target = make_target(student)
    spec = StreamSpec(batch_size=4, resolution=32, seed=0, random_crop=False)   # prep's latents: centre crop
    pixels = next(iter(TrainStream(open_source(str(root / "plain")), spec)))
    latents = next(iter(TrainStream(open_source(str(root / "latent")), spec)))
    assert torch.equal(pixels["index"], latents["index"]) and pixels["captions"] == latents["captions"]
    a = lcd_step(student, target, teacher, pixels, cfg, step=3)
    b = lcd_step(student, target, teacher, latents, cfg, step=3)
    torch.testing.assert_close(b.z0, a.z0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.lcd_loss, a.lcd_loss, rtol=1e-4, atol=1e-7)
    assert float(a.lcd_loss.detach()) > 0


# ---------------------------------------------------------------- the training stream

def _indices(source, n=6, **kw):
    stream = iter(TrainStream(source, StreamSpec(resolution=32, **kw)))
    return [next(stream)["index"].tolist() for _ in range(n)]


def test_stream_visits_every_record_once_per_epoch_in_a_seeded_order(prepped):
    root, plain, _ = prepped
    source = open_source(str(root / "plain"))
    positions = [(p, r.index) for p, r in zip(range(40), (x for _, x in global_records(source, 7, 6)))]
    epoch0, epoch1 = [i for p, i in positions[:20]], [i for p, i in positions[20:]]
    assert sorted(epoch0) == sorted(epoch1) == list(range(20))
    assert epoch0 != epoch1 and epoch0 != list(range(20))                       # reshuffled every epoch
    again = [r.index for _, r in zip(range(40), (x for _, x in global_records(source, 7, 6)))]
    assert again == [i for _, i in positions]
    other_seed = [r.index for _, r in zip(range(20), (x for _, x in global_records(source, 8, 6)))]
    assert other_seed != epoch0


def test_ranks_read_disjoint_parts_whose_union_is_the_single_process_batch(prepped):
    root, _, _ = prepped
    source = open_source(str(root / "plain"))
    single = _indices(source, batch_size=6, seed=1, shuffle_buffer=5)
    ranks = [_indices(source, batch_size=3, seed=1, shuffle_buffer=5, rank=r, world_size=2) for r in (0, 1)]
    for step in range(6):
        assert ranks[0][step] + ranks[1][step] == single[step]
    first_epoch = ranks[0][:3] + ranks[1][:3]                 # positions 0..17 of the 20 records
    assert len({i for batch in first_epoch for i in batch}) == 18


def test_stream_resumes_exactly_at_any_micro_batch(prepped):
    root, _, _ = prepped
    source = open_source(str(root / "plain"))
    full = _indices(source, batch_size=3, seed=2, shuffle_buffer=4, n=12)
    for start in (1, 5, 7):
        assert _indices(source, batch_size=3, seed=2, shuffle_buffer=4, start_batch=start, n=12 - start) == full[start:]


def test_loader_workers_do_not_change_the_order(prepped):
    from rglcd.data import make_loader

    root, _, _ = prepped
    source = open_source(str(root / "plain"))
    spec = StreamSpec(batch_size=3, resolution=32, seed=4, shuffle_buffer=8)
    plain = [b for _, b in zip(range(5), make_loader(source, spec, num_workers=0))]
    workers = [b for _, b in zip(range(5), make_loader(source, spec, num_workers=2))]
    for a, b in zip(plain, workers):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_shards_read_from_s3_equal_the_local_ones(prepped, s3_remote, monkeypatch):
    root, plain, _ = prepped
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_remote.server.endpoint_url)
    client = s3_remote.server.client()
    for name in ["manifest.json"] + [s["name"] for s in plain["shards"]]:
        client.upload_file(str(root / "plain" / name), s3_remote.bucket, f"data/{name}")
    remote = open_source(f"s3://{s3_remote.bucket}/data")
    local = open_source(str(root / "plain"))
    assert remote.unit_counts() == local.unit_counts() == [8, 8, 4]
    spec = StreamSpec(batch_size=4, resolution=32, seed=0)
    a, b = next(iter(TrainStream(remote, spec))), next(iter(TrainStream(local, spec)))
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert [s["count"] for s in plain["shards"]] == [8, 8, 4]


# ---------------------------------------------------------------- the command

def test_prep_cli_reports_counts(model_cache, tmp_path, capsys):
    from rglcd.cli import main

    _folder_with_bad_records(tmp_path / "src")
    code = main(["prep", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--set", f"model.cache_dir={model_cache}"])
    out = capsys.readouterr().out
    assert code == 0 and "kept 4 of 11 records" in out and '"duplicate": 1' in out
    assert main(["prep", "--source", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o2"),
                 "--set", f"model.cache_dir={model_cache}"]) == 1
    assert "nothing-here" in capsys.readouterr().err
