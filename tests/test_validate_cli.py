"""`fhir-node validate`: files, Bundles, NDJSON and folders; the issues printed; exit 1 on errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bihr_instances
import pytest

from fhir_node.cli import main

EXAMPLES = Path(__file__).parent / "fixtures" / "r4-examples"


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_valid_files_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "inclusion.json", bihr_instances.inclusion())
    (tmp_path / "consents.ndjson").write_text(
        "\n".join(json.dumps(bihr_instances.research_consent(s)) for s in ("17073003384", "85073003328"))
    )
    assert main(["validate", str(tmp_path)]) == 0
    assert "3 resource(s) checked, 0 error(s)" in capsys.readouterr().out


def test_errors_are_printed_with_file_severity_expression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": bihr_instances.inclusion()}, {"resource": bihr_instances.inclusion("85073003329")}],
    }
    path = write(tmp_path / "bundle.json", bundle)
    (tmp_path / "broken.ndjson").write_text('{"resourceType": "Patient"}\n{not json\n')
    assert main(["validate", str(path), str(tmp_path / "broken.ndjson")]) == 1
    out = capsys.readouterr().out
    assert f"{path}#entry[1]: error EpisodeOfCare.patient.identifier: Constraint bihr-ssin failed" in out
    assert not any(line.startswith(f"{path}#entry[0]: error") for line in out.splitlines())
    assert f"{tmp_path / 'broken.ndjson'}:2: fatal -: Cannot read" in out


def test_profile_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "patient.json", {"resourceType": "Patient"})
    assert main(["validate", str(path), "--profile", "https://example.org/StructureDefinition/unknown"]) == 1
    assert "not-found" not in capsys.readouterr().out  # the printed line has severity and expression, not the code


def test_the_official_examples_as_a_vendor_would(tmp_path: Path) -> None:
    """Through the installed command: the official Patient examples pass (warnings only)."""
    done = subprocess.run(
        [sys.executable, "-m", "fhir_node", "validate", *map(str, sorted(EXAMPLES.glob("Patient-*.json")))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    assert " error " not in done.stdout
