"""Every test that README.md's section 'What happens when things go wrong' names exists, so that no
line of it is backed by a test that was renamed or removed."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## What happens when things go wrong"
SHORT = {"faults": "tests/test_http_faults.py", "security": "tests/test_http_security.py",
         "properties": "tests/test_http_properties.py", "data": "tests/test_data_bad_input.py",
         "soak": "tests/test_http_soak.py"}
CASES = {"recover": "faults::test_retryable_faults_recover_to_the_clean_scores_within_the_budget",
         "persist": "faults::test_persistent_faults_stop_after_the_attempts_with_the_url_and_status",
         "refuse": "faults::test_refusals_and_bad_answers_stop_at_once_with_a_clear_error"}


def section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in readme, f"README.md has no section {HEADING!r}"
    return readme.split(HEADING, 1)[1].split("\n## ", 1)[0]


def named_tests(text: str) -> set[str]:
    """Node ids (``tests/file.py::test[case]``) of the tests the text names in backticks, pending lines excluded."""
    text = text.split("### Pending", 1)[0]
    names = set()
    for token in re.findall(r"`([^`]+)`", text):
        match = re.fullmatch(r"(recover|persist|refuse)\[(.+)\]", token)
        if match and match.group(2) == "...":  # the legend
            continue
        if match:
            token = f"{CASES[match.group(1)]}[{match.group(2)}]"
        match = re.fullmatch(r"(\w+|tests/[\w/]+\.py)::(test_\w+)(\[.+\])?", token)
        if match:
            file = SHORT.get(match.group(1), match.group(1))
            names.add(f"{file}::{match.group(2)}{match.group(3) or ''}")
    return names


def test_every_test_named_in_the_faults_section_exists():
    names = named_tests(section())
    assert len(names) >= 60, f"only {len(names)} tests named: is the section still there?"
    files = sorted({name.split("::")[0] for name in names})
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                *files], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.splitlines()
    functions = {line.split("[")[0] for line in collected if "::" in line}
    missing = sorted(name for name in names if name not in collected and name not in functions)
    assert missing == []
