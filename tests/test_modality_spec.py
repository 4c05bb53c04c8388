"""The modality spec is validated on load and errors name the offending field."""

from __future__ import annotations

import copy

import pytest
import yaml

from qanchor.modality_spec import ModalitySpecError, load_spec, parse_spec
from qanchor.user_files import UserFileError


@pytest.fixture()
def raw() -> dict:
    from importlib import resources

    return yaml.safe_load(resources.files("qanchor.specs").joinpath("default.yaml").read_text())


def test_default_spec_has_the_papers_six_modalities(spec):
    assert spec.names == ("bill", "mini", "spm", "app", "search", "tabular")
    assert spec.profile.name == "tabular"
    assert spec.modality("bill").numeric_names == ("amount",)
    assert spec.window_days == 90
    assert spec.history_windows(spec.modality("bill")) == (7, 30, 90)
    assert [m.name for m in spec.history_modalities] == ["bill", "mini", "spm", "app", "search"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["modalities"][0].pop("max_events"), "modalities[0] (bill).max_events: Field required"),
        (lambda d: d["modalities"][1].update(text_template="opened {nope}"), "undeclared fields ['nope']"),
        (lambda d: d["modalities"][2]["numeric_fields"][0].update(min=5e9), "modalities[2] (spm).numeric_fields[0] (dwell_s)"),
        (lambda d: d["modalities"][3].update(max_events=0), "modalities[3] (app).max_events: Input should be greater than 0"),
        (lambda d: d["modalities"].append(copy.deepcopy(d["modalities"][0])), "duplicate modality names"),
        (lambda d: d["modalities"][5]["fields"][1].pop("values"), "a category field needs a non-empty 'values' list"),
        (lambda d: d["modalities"][0].update(name="Bill Payments"), "modalities[0] (Bill Payments).name"),
        (lambda d: d["modalities"][0].update(colour="red"), "modalities[0] (bill).colour: Extra inputs are not permitted"),
        (lambda d: d["modalities"][0].update(history_kinds=-1), "modalities[0] (bill).history_kinds"),
        (lambda d: d.update(history_windows_days=[7, 7]), "history windows must be distinct positive day counts"),
        (lambda d: d.update(history_windows_days=[0, 30]), "history windows must be distinct positive day counts"),
    ],
)
def test_invalid_spec_errors_name_the_field(raw, mutate, expected):
    mutate(raw)
    with pytest.raises(ModalitySpecError) as err:
        parse_spec(raw, "custom.yaml")
    assert "custom.yaml" in str(err.value)
    assert expected in str(err.value)


def test_missing_and_malformed_files_are_reported(tmp_path):
    """A file that is not a YAML mapping is a UserFileError (the CLI's usage error), naming the file."""
    with pytest.raises(UserFileError, match="absent.yaml does not exist"):
        load_spec(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("modalities: [unclosed")
    with pytest.raises(UserFileError, match="bad.yaml is not valid YAML at line 1, column 22"):
        load_spec(bad)
