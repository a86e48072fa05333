"""The shape of the package (DESIGN.md, "Layout"): subpackages by concern whose imports point down
the data flow, MLflow behind allcls/tracking/, an inference package that loads neither MLflow nor
Lightning, and modules whose import changes nothing global."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from helpers import PROJECT

PACKAGE = PROJECT / "allcls"
# Each line imports only from its own line (without cycles) or the lines below it.
LAYERS = [
    {"serving", "packaged_model"},
    {"evaluation", "ensemble", "training"},
    {"jobs"},
    {"tracking"},
    {"inference", "models", "config", "data", "metrics"},
    {"allcls", "errors", "predictions", "progress", "figures", "locks", "machine"},
]
# Outside allcls/tracking/, only the pyfunc entry that MLflow itself loads may import mlflow.
PYFUNC_ENTRY = {"allcls/serving/pyfunc_model.py"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module a file imports, wherever in the file (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def concern(module: str) -> str:
    """allcls.tracking.run -> tracking; allcls.errors -> errors; allcls -> allcls."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer(name: str) -> int:
    return next(index for index, members in enumerate(LAYERS) if name in members)


def test_the_package_reads_as_its_concerns_with_few_modules_beside_them():
    beside = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    concerns = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert concerns == ["config", "data", "ensemble", "evaluation", "inference", "jobs", "metrics", "models",
                        "serving", "tracking", "training"]
    assert len(beside) <= 8, beside
    assert {Path(p).stem for p in beside} <= set.union(*LAYERS)


def test_imports_point_down_the_data_flow():
    arrows: set[tuple[str, str]] = set()
    for path in modules():
        source = concern(".".join(path.relative_to(PROJECT).with_suffix("").parts))
        for module in imported(path):
            target = concern(module)
            if module.startswith("allcls") and target != source:
                assert layer(target) >= layer(source), f"{path.relative_to(PROJECT)} imports {module}: an arrow up"
                arrows.add((source, target))
    cycles = sorted((a, b) for a, b in arrows if (b, a) in arrows)
    assert not cycles, f"subpackages that import each other: {cycles}"


def test_only_the_tracking_package_and_the_pyfunc_entry_import_mlflow():
    importers = sorted(str(p.relative_to(PROJECT)) for p in modules()
                       if any(m.split(".")[0] == "mlflow" for m in imported(p)))
    assert importers and all(p.startswith("allcls/tracking/") or p in PYFUNC_ENTRY for p in importers), importers


PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(*names: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing `names`."""
    out = subprocess.run([sys.executable, "-c", PROBE, *names], capture_output=True, text=True, check=True).stdout
    return {module.split(".")[0] for module in json.loads(out)}


def test_the_inference_package_loads_neither_mlflow_nor_lightning():
    inference = sorted(f"allcls.inference.{p.stem}" for p in (PACKAGE / "inference").glob("*.py"))
    loaded = loaded_by(*inference)
    assert "torch" in loaded and "allcls" in loaded  # the probe did import them
    assert not loaded & {"mlflow", "lightning", "pytorch_lightning", "albumentations", "streamlit"}


SNAPSHOT = """
import importlib, json, logging, os, signal, sys
from omegaconf import OmegaConf
def state():
    return {"environ": dict(os.environ), "root_handlers": len(logging.getLogger().handlers),
            "root_level": logging.getLogger().level, "pyplot": "matplotlib.pyplot" in sys.modules,
            "signals": {s.name: str(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)},
            "resolvers": [n for n in ("gt", "on_gpu", "mode_of", "tracking_uri") if OmegaConf.has_resolver(n)]}
libraries, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in libraries:  # what the libraries themselves change on import is theirs
    importlib.import_module(name)
before = state()
for name in ours:
    importlib.import_module(name)
print(json.dumps({"before": before, "after": state()}))
"""


def test_importing_any_module_changes_nothing_global():
    """Environment, OmegaConf's resolvers, logging, signal handlers, pyplot: the entry points set
    what they need (allcls.config.entry); importing a module of ours sets none of it. The file
    MLflow runs to build a packaged model (model_code.py) is left out: naming the model is its job."""
    ours = sorted(".".join(p.relative_to(PROJECT).with_suffix("").parts).removesuffix(".__init__")
                  for p in modules() if p.name != "model_code.py")
    libraries = sorted({m for p in modules() for m in imported(p) if not m.startswith("allcls")} - {"fcntl"})
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, "-c", SNAPSHOT, json.dumps(libraries), json.dumps(ours)],
                         capture_output=True, text=True, check=True, env=environment).stdout
    states = json.loads(out)
    assert states["after"] == states["before"]


def test_no_module_beside_the_page_hides_a_package_it_imports():
    """Streamlit runs allcls/serving/app.py as a script, with its folder first on sys.path: a module
    there named like an installed package (requests.py, say) would be imported in its place."""
    import importlib.util

    folder = PROJECT / "allcls" / "serving"
    hidden = [path.name for path in folder.glob("*.py") if path.stem != "__init__"
              and importlib.util.find_spec(path.stem) is not None]
    assert not hidden, f"modules in {folder} named like importable packages: {hidden}"
