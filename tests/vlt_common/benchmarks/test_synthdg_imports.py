"""SynthDG is a benchmark beside the runtime data path: the dataset package does not import it,
and importing it does not load the evaluation package."""
import subprocess
import sys


def _modules_after(statement):
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_runtime_datasets_do_not_import_synthdg():
    loaded = _modules_after("import vlt_common.data.datasets")
    assert not any(name.startswith("vlt_common.benchmarks") for name in loaded)


def test_registering_synthdg_loads_no_evaluation_or_plotting():
    loaded = _modules_after("import vlt_common.benchmarks.synthdg.builtin")
    assert "vlt_common.benchmarks.synthdg.register" in loaded
    assert not any(name.startswith("vlt_common.evaluation") for name in loaded)
    assert "matplotlib" not in loaded
