"""Using what a run bought: `bbvp predict --prompt` and load_classifier(...).predict on new images give the run's
own classes, batched, counted, with unreadable files named and skipped."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import httpx
import numpy as np
import pytest
from loopback import running
from PIL import Image

from backends import CountingBackend
from backends.http import HTTPBackend
from backends.http.codecs import png_base64
from backends.http.server import create_app
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, load_classifier, optimize
from blackbox_vp.classifier import PromptedBackend
from blackbox_vp.cli import main
from blackbox_vp.data import load_task, split
from blackbox_vp.run_setup import split_sizes


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A prompt learned on toy (guided + head), and its run's test split written as PNG files, one folder a class."""
    root = tmp_path_factory.mktemp("use")
    config = RunConfig(backend="toy", optimizer="guided", data="digits", budget=1500, train=300, val=60, test=90,
                       grid=4, quiet=True, seed=2, out=str(root / "run"))
    result = optimize(config)
    classifier = load_classifier(root / "run" / "prompt.json")
    dataset = load_task("digits", classifier.prompt.inner_size, seed=2)
    test = split(dataset, *split_sizes(config, 1500, len(dataset), 10), seed=2).test
    folder = root / "images"
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        (folder / test.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / test.classes[label] / f"{i:03d}.png")
    return result, classifier, test, folder


def test_the_python_classifier_gives_the_runs_test_accuracy(learned):
    result, classifier, test, _ = learned
    counted = CountingBackend(ToyBackend())
    chosen, probability = classifier.predict(test.images, counted)
    assert float(np.mean(chosen == test.labels)) == result.test_accuracy
    assert counted.images_sent == len(test) and counted.calls == 1 and np.all((probability > 0) & (probability <= 1))
    assert classifier.classes == test.classes and classifier.metadata["backend"] == "toy"


def test_predict_on_a_folder_prints_the_classes_the_run_would_give(learned, capsys):
    result, classifier, test, folder = learned
    assert main(["predict", "--prompt", str(classifier_path(folder)), str(folder), "--csv", "--quiet"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(test) and {row["rank"] for row in rows} == {"1"}
    truth = {row["image"]: row["image"].split("/")[-2] for row in rows}
    accuracy = np.mean([row["class"] == truth[row["image"]] for row in rows])
    assert accuracy == result.test_accuracy
    files = sorted(folder.rglob("*.png"), key=lambda path: path.name)  # named by their index in the test split
    by_image = {row["image"]: row["class"] for row in rows}
    chosen, _ = classifier.predict(test.images, ToyBackend())
    assert [by_image[str(path)] for path in files] == [test.classes[c] for c in chosen]  # image by image
    assert f"{len(test)} images classified, {len(test)} sent to toy" in err  # the backend recorded in prompt.json


def test_unreadable_files_are_named_and_skipped_and_the_budget_caps_what_is_sent(learned, tmp_path, capsys):
    _, classifier, test, folder = learned
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    files = sorted(folder.rglob("*.png"))[:5]
    code = main(["predict", "--prompt", str(classifier_path(folder)), *map(str, files), str(broken), "--json",
                 "--top", "3", "--budget", "4"])
    out, err = capsys.readouterr()
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and len(answers) == 4 and all(len(answer["classes"]) == 3 for answer in answers)
    assert f"cannot read image {broken}" in err and "going on with the others" in err
    assert "--budget 4 reached; 1 images were not sent" in err and "4 images classified, 4 sent to toy" in err


def classifier_path(folder):
    return folder.parent / "run" / "prompt.json"


def test_serve_prompt_in_front_of_an_upstream_server_gives_the_runs_classes(learned):
    """`bbvp serve --prompt` before `bbvp serve --backend toy`: the project's client and plain curl get the run's
    classes; /metrics counts the images sent upstream; an upstream that is down is a 502 with its reason."""
    result, classifier, test, _ = learned
    with running(create_app(ToyBackend(), "toy")) as upstream_url:
        upstream = HTTPBackend(upstream_url, "bbvp")
        with running(create_app(PromptedBackend(classifier, upstream), "prompted")) as url:
            client = HTTPBackend(url, "bbvp")
            try:
                assert client.labels == test.classes and client.image_size == tuple(classifier.prompt.inner_size)
                predicted = client.query(test.images).argmax(axis=1)
            finally:
                client.close()
            assert float(np.mean(predicted == test.labels)) == result.test_accuracy
            body = json.dumps({"inputs": png_base64(test.images[0])})
            answer = subprocess.run(["curl", "-s", "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                                     f"{url}/hf/models/prompted"], capture_output=True, text=True, check=True).stdout
            assert json.loads(answer)[0]["label"] == test.classes[predicted[0]]
            metrics = httpx.get(f"{url}/metrics").text
            assert f"bbvp_images_total {len(test) + 1}" in metrics
            assert f"bbvp_upstream_images_total {len(test) + 1}" in metrics and "# TYPE bbvp_upstream_retries_total" in metrics
    with running(create_app(PromptedBackend(classifier, upstream), "prompted")) as url:  # the upstream is gone now
        failed = httpx.post(f"{url}/bbvp/v1/predict", json={"images": [png_base64(test.images[0])]}, timeout=60)
        upstream.close()
    assert failed.status_code == 502 and "the upstream model failed: no answer from" in failed.json()["error"]
