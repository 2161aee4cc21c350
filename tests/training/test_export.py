"""EXPORT's outputs written from a run's final model (okto.training.outputs.export)."""

from __future__ import annotations

import pytest

from okto.errors import UsageError
from okto.language.config import ExportConfig
from okto.training.outputs import export
from tests.inference import models


def test_an_export_path_that_cannot_be_a_folder_names_the_setting(tmp_path):
    """EXPORT.path under a file raised the OSError of mkdir, which the run reported as 'the
    trained model could not be written to runs/x/final' though final/ was written: now a
    usage error naming EXPORT.path, which the run reports as the export failing."""
    final = models.save("gpt2", tmp_path / "final")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match=r"EXPORT\.path: cannot make the folder .*a-file"):
        export(final, ExportConfig(format="okm"), tmp_path / "a-file" / "export", "tiny")
