"""rglcd.data.version (cheap source versions: file stats, S3 listings on a real moto server, prep manifests),
the pipeline's data check against a real registry (rglcd.registry.datacheck), and the warm start's pull of the
production student (rglcd.train.warm)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rglcd.data.version import NoCheapVersion, source_version
from rglcd.registry import promote, publish
from rglcd.registry.datacheck import NO_NEW_DATA, check_new_data


def write_images(folder: Path, names: list[str], size: int = 80) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (size, size), (40 * i % 255, 90, 160)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a test image number {i}")


# ---------------------------------------------------------------- local folders and files

def test_local_folder_version_follows_the_file_stats(tmp_path):
    data = tmp_path / "images"
    write_images(data, ["a", "b"])
    first = source_version(str(data))
    assert first == source_version(str(data)) and len(first) == 64
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, copy_function=shutil.copy2)          # same names, sizes and mtimes elsewhere
    assert source_version(str(copy)) == first                        # paths are relative to the folder
    write_images(data, ["c"])
    added = source_version(str(data))
    assert added != first
    st = os.stat(data / "a.txt")
    os.utime(data / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))   # touched: a new mtime
    assert source_version(str(data)) not in (first, added)
    (data / "c.png").unlink()
    (data / "c.txt").unlink()
    os.utime(data / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source_version(str(data)) == first                        # back to the same files and stats


def test_single_file_pattern_and_missing_source(tmp_path):
    table = tmp_path / "table.jsonl"
    table.write_text('{"image": "a.png", "caption": "x"}\n')
    before = source_version(str(table))
    table.write_text('{"image": "a.png", "caption": "xy"}\n')
    assert source_version(str(table)) != before
    for i in range(2):
        (tmp_path / f"shard-{i}.tar").write_bytes(b"x" * (i + 1))
    pattern = source_version(str(tmp_path / "shard-{0..1}.tar"))
    (tmp_path / "shard-1.tar").write_bytes(b"yyy")
    assert source_version(str(tmp_path / "shard-{0..1}.tar")) != pattern
    with pytest.raises(FileNotFoundError, match="does not exist"):
        source_version(str(tmp_path / "absent"))
    with pytest.raises(NoCheapVersion, match="no versioner for its scheme"):
        source_version("gs://bucket/data")


def test_prep_output_version_is_its_manifest_content_hash(tiny_cfg, tmp_path):
    from rglcd.data.prep import prep

    cfg = tiny_cfg("data.train=builtin:photos:4")
    manifest = prep(cfg, cfg.data.train, tmp_path / "prepped")
    assert source_version(str(tmp_path / "prepped")) == manifest["content_hash"]
    assert source_version("builtin:photos:4") == source_version("builtin:photos:4") != source_version("builtin:photos:5")


def test_a_manifest_without_a_content_hash_is_refused(tmp_path):
    bad = tmp_path / "prepped"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": "rglcd-shards/1", "shards": [], "num_records": 0, "latents": {}, '
                                       '"content_hash": ["x"]}')
    with pytest.raises(ValueError, match="content_hash"):
        source_version(str(bad))


# ---------------------------------------------------------------- S3 (moto server)

def test_s3_prefix_version_from_one_listing(s3_remote, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_remote.server.endpoint_url)
    s3, bucket = s3_remote.server.client(), s3_remote.bucket
    for name in ("a.tar", "b.tar"):
        s3.put_object(Bucket=bucket, Key=f"data/{name}", Body=name.encode() * 10)
    prefix = f"s3://{bucket}/data"
    first = source_version(prefix)
    assert source_version(prefix + "/") == first
    s3.put_object(Bucket=bucket, Key="data/a.tar", Body=b"a.tar" * 10)     # same bytes again: same ETag
    assert source_version(prefix) == first
    s3.put_object(Bucket=bucket, Key="data/c.tar", Body=b"new")            # a new object
    added = source_version(prefix)
    assert added != first
    s3.put_object(Bucket=bucket, Key="data/c.tar", Body=b"NEW")            # same size, other bytes: other ETag
    assert source_version(prefix) not in (first, added)
    assert source_version(f"s3://{bucket}/data/a.tar") != source_version(f"s3://{bucket}/data/b.tar")
    s3.put_object(Bucket=bucket, Key="prepped/manifest.json", Body=b'{"format": "rglcd-shards/1", "shards": [], '
                  b'"num_records": 0, "latents": {}, "content_hash": "abc123"}')
    assert source_version(f"s3://{bucket}/prepped") == "abc123"            # a prep output on S3: its manifest
    with pytest.raises(FileNotFoundError, match="does not exist"):
        source_version(f"s3://{bucket}/nothing-here")


# ---------------------------------------------------------------- the data check against a real registry

@pytest.fixture
def registry_cfg(tiny_cfg, mlflow_db, tmp_path):
    data = tmp_path / "images"
    write_images(data, ["a", "b"])
    return tiny_cfg(f"data.train={data}")


def test_data_check_skips_unchanged_data_only(registry_cfg, tiny_student_dir):
    from rglcd.config.fields import to_dict

    cfg = registry_cfg
    first = check_new_data(cfg)
    assert first.proceed and first.production_version is None and "no production model" in first.reason
    info = publish(cfg, tiny_student_dir, {"hps": 0.2}, to_dict(cfg), "prep-hash", source_version=first.source_version
                   ).version
    assert info.source_version == first.source_version
    assert check_new_data(cfg).proceed                        # registered as candidate only: nothing in production
    promote(cfg, info.version, "production")
    skip = check_new_data(cfg)
    assert not skip.proceed and skip.reason.startswith(NO_NEW_DATA) and skip.production_version == info.version
    forced = check_new_data(cfg, force=True)
    assert forced.proceed and "forced" in forced.reason
    cfg.data.skip_unchanged = False
    assert check_new_data(cfg).proceed
    cfg.data.skip_unchanged = True
    write_images(Path(cfg.data.train), ["c"])
    new = check_new_data(cfg)
    assert new.proceed and new.reason.startswith("training: new data") and new.source_version != first.source_version


def test_warm_start_pulls_the_production_student(registry_cfg, tiny_student_dir):
    import torch
    from diffusers import UNet2DConditionModel

    from rglcd.config.fields import to_dict
    from rglcd.models import load_teacher
    from rglcd.train.setup import build_student
    from rglcd.train.warm import production_student

    cfg = registry_cfg
    cfg.train.warm_start = "production"
    assert production_student(cfg) == (None, {"from": "teacher", "reason": "no production version"})
    info = publish(cfg, tiny_student_dir, {"hps": 0.2}, to_dict(cfg), "prep-hash").version
    promote(cfg, info.version, "production")
    state, used = production_student(cfg)
    assert used == {"from": "production", "model_name": cfg.registry.model_name, "version": info.version,
                    "md5": info.pointer.md5, "data_version": "prep-hash"}
    teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir)
    student = build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim, state)
    want = UNet2DConditionModel.from_pretrained(str(Path(tiny_student_dir) / "unet")).state_dict()
    got = student.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k].float()) for k in want)
    cold = build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim)
    assert not torch.equal(cold.state_dict()["conv_in.weight"], got["conv_in.weight"])   # not the teacher's
