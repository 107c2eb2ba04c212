"""Safety of the code: no unpickling of user files, no eval / exec on input, no shell strings
(ruff's S rules enforce most of it in `make lint`; this test also catches what ruff does not)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for part in ("scene3d", "avfm", "viewer", "scripts") for p in (ROOT / part).rglob("*.py")]
FORBIDDEN = {
    r"\bpickle\b|\bcPickle\b|\bdill\b|\bjoblib\.load": "pickle",
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"allow_pickle=True": "np.load with allow_pickle",
    r"(?<![\w.])(eval|exec)\(": "eval / exec",
    r"shell=True|os\.system\(|os\.popen\(": "shell strings",
    r"yaml\.load\((?![^)]*SafeLoader)|yaml\.unsafe_load": "unsafe YAML",
    r"trust_remote_code=True": "remote code",
}
ALLOWED = {("lab/reliability/fuzz.py", "np.load with allow_pickle")}  # writes a pickled .npy to check it is refused


def test_no_pickle_eval_exec_or_shell_strings_in_the_code():
    found = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            for pattern, what in FORBIDDEN.items():
                if re.search(pattern, code) and (rel, what) not in ALLOWED and not code.lstrip().startswith('"'):
                    found.append(f"{rel}:{n}: {what}: {line.strip()}")
    assert not found, found


def test_model_folders_load_safetensors_only():
    for rel in ("scene3d/diffusion/stable.py", "scene3d/diffusion/pixel.py", "avfm/teachers.py"):
        text = (ROOT / rel).read_text()
        assert "use_safetensors=True" in text or '"use_safetensors": True' in text, rel


def test_ruff_security_rules_are_on():
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "S" in lint["select"]
    assert not {"S301", "S307", "S602", "S604", "S605", "S614"} & set(lint.get("ignore", []))
