"""Import a script of ``tools/`` (not a package) as a module, for the tools' tests."""
import importlib.util
import pathlib

TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"


def load_tool(name):
    """
    Args:
        name (str): file name in ``tools/`` without ``.py`` (e.g. "demo").

    Returns:
        module: the script, executed as a module (its ``main`` is not run).
    """
    spec = importlib.util.spec_from_file_location(f"vlt_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
