"""Released detectors by name: the real Crane files served over a local HTTP server, downloaded, verified,
imported once and run (`zsad detect --model crane-mvtec`), with the failures a user must be able to trust."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared"
CRANE_FILES = SHARED / "checkpoints" / "crane"
pytestmark = pytest.mark.skipif(not CRANE_FILES.is_dir(), reason="../shared is absent")

REPOSITORY, REVISION = "AlirezaSalehy/Crane", "39181f9f718a28c1b06b5aa72bfb81e74b9a2cc3"
CRANE_MVTEC = "checkpoints/trained_on_mvtec_crane/epoch_5.pth"


class FileServer:
    """Serves `files` (`{url path: bytes}`) on 127.0.0.1 with Range support, counting GETs per path.

    `mode`: `ok`; `flip` (one byte of every file changed); `drop` (the first response of a path sends
    its headers and half the bytes, then closes the connection)."""

    def __init__(self, files: dict[str, bytes], mode: str = "ok"):
        self.files, self.mode = files, mode
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if server.mode == "flip":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                first = sum(path == self.path for path, _ in server.requests) == 1
                if server.mode == "drop" and first:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self, path: str) -> int:
        return sum(p == path for p, _ in self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def crane_files() -> dict[str, bytes]:
    return {f"/{REPOSITORY}/{REVISION}/{CRANE_MVTEC}": (CRANE_FILES / "trained_on_mvtec_crane" / "epoch_5.pth").read_bytes()}


@pytest.fixture
def online(tmp_path, monkeypatch):
    """A fresh Hugging Face cache and online mode (the suite runs with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf-cache"


def write_images(folder: Path, count: int = 2) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"part{i}.png")
    return folder


def cached_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file() and p.name != ".lock")


def test_checksums_are_what_git_and_sha256sum_compute(tmp_path):
    from zsad.hub.released.download import file_digest

    path = tmp_path / "file.bin"
    path.write_bytes(b"some bytes\x00\xff" * 1000)
    (tmp_path / "repo").mkdir()
    git_id = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert file_digest(path, "git-blob-sha1") == git_id
    assert file_digest(path, "sha256") == hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_pins_the_real_crane_files():
    """Every Crane entry's size and SHA-256 are those of the authors' file, from a pinned 40-digit commit."""
    from zsad.hub.released.registry import registry

    crane = [e for e in registry().values() if e.method in ("crane", "crane+")]
    assert {e.name for e in crane} == {"crane-mvtec", "crane-visa", "crane-plus-mvtec", "crane-plus-mvtec-medical",
                                      "crane-plus-visa"}
    for entry in crane:
        folder = entry.github["path"].split("/")[1]
        data = (CRANE_FILES / folder / Path(entry.github["path"]).name).read_bytes()
        assert entry.size == len(data)
        assert entry.checksum == {"sha256": hashlib.sha256(data).hexdigest()}
        assert len(entry.github["revision"]) == 40 and entry.github["repository"] == REPOSITORY
    assert registry()["crane-plus-mvtec-medical"].variant.config_settings(24)["soft_mean"] is True
    assert registry()["crane-plus-mvtec"].variant.config_settings(24)["soft_mean"] is False


def test_fresh_cache_downloads_verifies_imports_and_detects_then_makes_no_request(
        online, vitl_text_backbone, tmp_path, monkeypatch, capsys):
    images = write_images(tmp_path / "images")
    files = crane_files()
    (path,) = files
    with FileServer(files) as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        argv = ["detect", str(images), "--model", "crane-mvtec", "--backbone", str(vitl_text_backbone),
                "--image-size", "28", "--quiet"]
        assert main([*argv, "--out", str(tmp_path / "first")]) == 0, capsys.readouterr().err
        assert server.gets(path) == 1
        cached = cached_files(online)
        assert [f for f in cached if f.endswith(".pth")] == [
            f"zsad-released/crane-mvtec/sha256-{hashlib.sha256(files[path]).hexdigest()}/epoch_5.pth"]
        assert any(f.endswith("/config.json") and "/imported-" in f for f in cached)
        first = json.loads((tmp_path / "first" / "scores.json").read_text())
        assert first["settings"]["model"] == "crane-mvtec"

        assert main([*argv, "--out", str(tmp_path / "second")]) == 0
        assert server.gets(path) == 1  # the second run makes no request
    second = json.loads((tmp_path / "second" / "scores.json").read_text())
    assert [r["score"] for r in second["results"]] == [r["score"] for r in first["results"]]


def test_registry_model_equals_import_checkpoint_on_the_same_file(online, vitl_text_backbone, tmp_path, monkeypatch, capsys):
    from transformers import AutoModel

    import zsad

    with FileServer(crane_files()) as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        from_registry = zsad.from_zoo("crane-mvtec", backbone=str(vitl_text_backbone)).eval()
    file = CRANE_FILES / "trained_on_mvtec_crane" / "epoch_5.pth"
    assert main(["import-checkpoint", "crane", str(file), str(tmp_path / "manual"), "--backbone", str(vitl_text_backbone)]) == 0
    manual = AutoModel.from_pretrained(tmp_path / "manual").eval()
    assert type(manual) is type(from_registry)
    for name, tensor in manual.adapter_state_dict().items():
        assert torch.equal(tensor, from_registry.adapter_state_dict()[name]), name
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = manual(pixel_values=pixels), from_registry(pixel_values=pixels)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps) and torch.equal(a.pred_scores, b.pred_scores)

    from transformers import pipeline  # the model from_zoo returns drives the transformers pipeline as is

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    result = pipeline("zero-shot-anomaly-detection", model=from_registry)(image)
    assert 0.0 <= result["score"] <= 1.0 and result["anomaly_map"].size == (30, 40)  # the image's own width x height


def test_a_flipped_byte_is_refused_and_nothing_is_cached(online, vitl_text_backbone, tmp_path, monkeypatch, capsys):
    from zsad.hub.released.registry import registry

    with FileServer(crane_files(), mode="flip") as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        code = main(["detect", str(write_images(tmp_path / "images")), "--model", "crane-mvtec", "--backbone",
                     str(vitl_text_backbone), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    expected = registry()["crane-mvtec"].checksum["sha256"]
    assert "epoch_5.pth has sha256" in err[0] and f"expected {expected}" in err[0] and "nothing was cached" in err[0]
    assert cached_files(online) == []  # no file, no partial file, no imported checkpoint


def test_a_dropped_connection_ends_in_a_complete_file_and_never_caches_half_a_file(online, monkeypatch):
    from zsad.hub.released.download import fetch
    from zsad.hub.released.registry import registry

    files = crane_files()
    (path,) = files
    entry = registry()["crane-mvtec"]
    with FileServer(files, mode="drop") as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        try:
            cached = fetch(entry)
        except OSError as error:  # the retries gave up: the partial file stays for the next run
            assert "the next run resumes" in str(error)
            assert not any(f.endswith(".pth") for f in cached_files(online))
            cached = fetch(entry)
    assert server.gets(path) >= 2  # the dropped response was followed by a resumed or restarted one
    assert cached.read_bytes() == files[path]
    assert [f for f in cached_files(online) if not f.endswith(".pth")] == []  # no .incomplete left


def test_an_interrupted_run_resumes_from_its_partial_file(online, monkeypatch):
    from zsad.hub.released.download import cached_file, fetch
    from zsad.hub.released.registry import registry

    files = crane_files()
    (path,) = files
    entry = registry()["crane-mvtec"]
    partial = cached_file(entry).with_name("epoch_5.pth.incomplete")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(files[path][:100_000])  # what a killed download left behind
    with FileServer(files) as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        assert fetch(entry).read_bytes() == files[path]
    assert server.requests == [(path, "bytes=100000-")]
    assert not partial.exists()


def test_two_processes_started_together_download_once(online, tmp_path):
    files = crane_files()
    (path,) = files
    code = ("import sys\nfrom zsad.hub.released.download import fetch\nfrom zsad.hub.released.registry import registry\n"
            "print(fetch(registry()['crane-mvtec']))\n")
    with FileServer(files) as server:
        env = {**__import__("os").environ, "ZSAD_GITHUB_RAW_URL": server.url, "HF_HUB_CACHE": str(online),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
        outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    assert server.gets(path) == 1


def test_offline_with_and_without_the_cache(online, vitl_text_backbone, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    images = write_images(tmp_path / "images")
    argv = ["detect", str(images), "--model", "crane-mvtec", "--backbone", str(vitl_text_backbone), "--image-size", "28",
            "--quiet"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", "http://127.0.0.1:9")  # nothing listens there
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "http://127.0.0.1:9/" in err[0]
    assert "zsad import-checkpoint crane FILE OUT_DIR --trained-on mvtec" in err[0]

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FileServer(crane_files()) as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        assert main([*argv, "--out", str(tmp_path / "b")]) == 0  # fills the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", "http://127.0.0.1:9")
    assert main([*argv, "--out", str(tmp_path / "c")]) == 0  # cached: no request at all
    capsys.readouterr()


def test_zsad_models_lists_the_registry(online, capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in rows]
    assert names[0] == "crane-mvtec (default)" and "crane-plus-visa" in names and "zero-shot-clip" in names
    crane_visa = next(row for row in rows if row["name"] == "crane-visa")
    assert crane_visa["trained on"] == "VisA" and crane_visa["cached"] == "no"
    assert crane_visa["paper image AUROC"] == "93.8"  # the Crane paper's MVTec AD row, the one dataset it reports


def test_push_mirrors_a_registry_entry_with_its_card(online, vitl_text_backbone, monkeypatch, capsys):
    with FileServer(crane_files()) as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        assert main(["push", "crane-mvtec", "acme/crane-mvtec", "--dry-run", "--backbone", str(vitl_text_backbone)]) == 0
    out = capsys.readouterr().out
    assert "would create the model repository acme/crane-mvtec" in out
    for name in ("config.json", "model.safetensors", "README.md", "modeling_zsad.py"):
        assert f"  {name}  (" in out


def small_copy(source: Path, target: Path, per_folder: int = 2) -> Path:
    """The first `per_folder` images of each test folder of an MVTec-layout category, with their masks."""
    import shutil

    for folder in sorted((source / "test").iterdir()):
        for image in sorted(folder.iterdir())[:per_folder]:
            (target / "test" / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target / "test" / folder.name / image.name)
            mask = source / "ground_truth" / folder.name / f"{image.stem}_mask.png"
            if mask.is_file():
                (target / "ground_truth" / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, target / "ground_truth" / folder.name / mask.name)
    return target


def test_benchmark_writes_the_papers_table_with_the_authors_protocol(online, vitl_text_backbone, tmp_path, monkeypatch, capsys):
    import csv

    data = SHARED / "data"
    small_copy(data / "mpdd_metal_plate" / "metal_plate", tmp_path / "mpdd_src" / "metal_plate")
    small_copy(data / "head_ct" / "head_ct", tmp_path / "headct_src" / "head_ct")
    for name in ("mpdd", "headct"):
        assert main(["convert", "mvtec", str(tmp_path / f"{name}_src"), str(tmp_path / name)]) == 0
    out = tmp_path / "bench"
    with FileServer(crane_files()) as server:
        monkeypatch.setenv("ZSAD_GITHUB_RAW_URL", server.url)
        code = main(["benchmark", "--model", "crane-mvtec", "--dataset", f"mpdd={tmp_path / 'mpdd'}",
                     "--dataset", f"headct={tmp_path / 'headct'}", "--dataset", f"mvtec={tmp_path / 'mpdd'}",
                     "--backbone", str(vitl_text_backbone), "--image-size", "28", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with open(out / "benchmark.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["dataset"], r["category"]) for r in rows] == [
        ("MPDD", "metal_plate"), ("MPDD", "mean"), ("HeadCT", "head_ct"), ("HeadCT", "mean")]  # MVTec AD left out
    mpdd, headct = rows[1], rows[3]
    # The Crane paper's Table 1, Crane column: MPDD image AUROC 81.4, pixel AUROC 97.0, AUPRO 89.3; HeadCT 95.3.
    assert (mpdd["image AUROC paper"], mpdd["pixel AUROC paper"], mpdd["AUPRO (paper-compatible) paper"]) == ("81.4", "97.0", "89.3")
    assert headct["image AUROC paper"] == "95.3" and headct["pixel AUROC paper"] == "" and headct["pixel AUROC"] == ""
    for row in (mpdd, headct):
        ours = float(row["image AUROC"])
        assert row["image AUROC difference"] == f"{ours - float(row['image AUROC paper']):+.1f}"
    metrics = json.loads((out / "crane-mvtec" / "mpdd" / "mpdd" / "metrics.json").read_text())
    assert float(mpdd["image AUROC"]) == pytest.approx(100 * metrics["macro"]["image_auroc"], abs=0.051)
    assert float(mpdd["AUPRO (exact)"]) == pytest.approx(100 * metrics["macro"]["pixel_aupro"], abs=0.051)
    assert mpdd["AUPRO (paper-compatible)"] != ""
    markdown = (out / "benchmark.md").read_text()
    assert "crane-mvtec was trained on mvtec: left out (zero-shot protocol)" in markdown
    assert "| crane-mvtec | MPDD | mean |" in markdown
