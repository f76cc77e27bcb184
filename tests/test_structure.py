"""The code's layering (tools/import_graph.py): no import circle, no arrow from a lower room to a higher one."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_and_never_circle():
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py")], capture_output=True, text=True)
    assert run.returncode == 0 and "no circle, no arrow up" in run.stdout, run.stdout + run.stderr


def test_the_checker_sees_an_arrow_up(tmp_path, monkeypatch):
    # the tool must fail on a model module that imports inference (what issue 26 removed)
    sys.path.insert(0, str(ROOT / "tools"))
    import import_graph

    src = tmp_path / "src"
    (src / "nativevl" / "model").mkdir(parents=True)
    (src / "nativevl" / "infer").mkdir()
    for pkg in ("nativevl", "nativevl/model", "nativevl/infer"):
        (src / pkg / "__init__.py").write_text("")
    (src / "nativevl" / "infer" / "chat.py").write_text("from nativevl.model.internvl import X\n")
    (src / "nativevl" / "model" / "internvl.py").write_text("def f():\n    from nativevl.infer.chat import chat\n")
    monkeypatch.setattr(import_graph, "SRC", src)
    monkeypatch.setattr(sys, "argv", ["import_graph.py"])
    assert import_graph.main() == 1
