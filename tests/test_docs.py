"""Every citation of the project's documents resolves (docs/README.md, "Citing these documents from code").

Code cites `docs/<file>.md <section>`; a section is a heading number (`## 2. ...` -> 2, `### 2.5 ...` -> 2.5)
or a heading's title in double quotes (`docs/serving.md "Canary"`).
The checker below scans the repository's code and documents and reports citations of a missing file or
section, relative Markdown links to missing files, repeated section numbers, and citations of the outside
planning notes the project started from (they are not in the repository).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("rglcd", "components", "pipelines", "benchmarks", "tests", "images", "manifests", "docs", ".ci")
SCANNED_FILES = ("README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".ini", ".Dockerfile"}
NAMES = {"Makefile", "Dockerfile", "run"}
SKIP_PARTS = {".git", ".venv", "__pycache__", "node_modules", ".pytest_cache"}

NUMBER = r"\d+(?:\.\d+)*"
CITATION = re.compile(rf"docs/([A-Za-z0-9_.-]+\.md)(?:[ \t]+(?:§[ \t]*)?({NUMBER}(?:[ \t]*(?:-|–|,|and)[ \t]*{NUMBER})*)"
                      r'|[ \t]+"([^"\n]{1,80})")?')
HEADING = re.compile(rf"^#{{1,6}}[ \t]+({NUMBER})\.?[ \t]+\S", re.MULTILINE)
HEADING_TITLE = re.compile(rf"^#{{1,6}}[ \t]+(?:{NUMBER}\.?[ \t]+)?(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
MD_LINK = re.compile(r"\]\(([^)\s#]+\.md)(?:#[^)]*)?\)")
# The planning notes outside the repository; code must cite docs/ instead.
OUTSIDE_NOTES = ("METHOD", "DESIGN", "STYLE", "anchors", "offline-assets", "env-feasibility", "rglcd-reference",
                 "k8s-testing", "paper-summary")
OUTSIDE = re.compile(r"(?<![\w.-])(?:" + "|".join(re.escape(n) for n in OUTSIDE_NOTES) + r")\.md\b"
                     r"|shared/notes|\breference notes\b")


def scanned_files(root: Path) -> list[Path]:
    """The code and document files the checks read, under `root`."""
    files = [root / name for name in SCANNED_FILES if (root / name).is_file()]
    for folder in SCANNED_DIRS:
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
            if SKIP_PARTS & set(path.relative_to(root).parts) or not path.is_file():
                continue
            if path.suffix in SUFFIXES or path.name in NAMES or path.name.endswith(".Dockerfile"):
                files.append(path)
    return files


def section_numbers(markdown: str) -> list[str]:
    """Heading numbers of a Markdown document, in order (repeats included)."""
    return HEADING.findall(markdown)


def section_titles(markdown: str) -> set[str]:
    """Heading titles of a Markdown document without their numbers, lower-cased ("## 4.1 Steps" -> "steps")."""
    return {t.lower() for t in HEADING_TITLE.findall(markdown)}


def cited_numbers(spec: str) -> list[str]:
    """'2.1-2.4' -> ['2.1', '2.4']; '2.6 and 2.8' -> ['2.6', '2.8']; '2.10, 3' -> ['2.10', '3']."""
    return re.findall(NUMBER, spec)


def find_citations(text: str) -> list[tuple[int, str, list[str]]]:
    """(line, file name, cited sections) of every `docs/<file>.md [section]` in `text`: numbers, or one
    quoted title."""
    out = []
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        out.append((line, m.group(1), [f'"{m.group(3)}"'] if m.group(3) else cited_numbers(m.group(2) or "")))
    return out


def check_tree(root: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every problem with citations, links, section numbers and outside notes under `root`, one line each."""
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted((root / "docs").glob("*.md"))}
    numbered = {name: section_numbers(text) for name, text in texts.items()}
    sections = {name: set(numbered[name]) | {f'"{t}"' for t in section_titles(text)} for name, text in texts.items()}
    problems = [f"docs/{name}: section {n} appears {nums.count(n)} times"
                for name, nums in numbered.items() for n in sorted(set(nums)) if nums.count(n) > 1]
    for path in scanned_files(root):
        if path in skip:
            continue
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        for line, name, numbers in find_citations(text):
            if name not in sections:
                problems.append(f"{rel}:{line}: cites docs/{name}, which does not exist")
                continue
            problems += [f"{rel}:{line}: cites docs/{name} {n}, which has no section {n}"
                         for n in numbers if n.lower() not in sections[name]]
        for m in OUTSIDE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{rel}:{line}: cites {m.group(0)!r}, a note outside the repository; cite docs/ instead")
        if path.suffix == ".md":
            for m in MD_LINK.finditer(text):
                target = (path.parent / m.group(1)).resolve()
                if "://" not in m.group(1) and not target.is_file():
                    line = text.count("\n", 0, m.start()) + 1
                    problems.append(f"{rel}:{line}: links to {m.group(1)}, which does not exist")
    return problems


# ---------------------------------------------------------------- the repository

def test_every_citation_in_the_repository_resolves():
    problems = check_tree(ROOT, skip=(Path(__file__).resolve(),))
    assert problems == [], "broken documentation references:\n" + "\n".join(problems)


def test_the_code_cites_the_docs():
    """The scan is not vacuous: the code's docstrings cite docs/ sections, the method most of all."""
    cited = [(path, c) for path in scanned_files(ROOT) if path.suffix == ".py" and path != Path(__file__).resolve()
             for c in find_citations(path.read_text(encoding="utf-8"))]
    assert len(cited) >= 80, f"only {len(cited)} citations of docs/ found in Python files"
    files = {c[1] for _, c in cited}
    assert {"method.md", "architecture.md"} <= files
    assert sum(1 for _, c in cited if c[1] == "method.md" and c[2]) >= 50


def test_method_keeps_the_specification_numbering():
    """`docs/method.md` keeps sections 1-7 and items 2.1-2.10 of the specification it replaces."""
    numbers = set(section_numbers((ROOT / "docs" / "method.md").read_text(encoding="utf-8")))
    assert {str(n) for n in range(1, 8)} <= numbers
    assert {f"2.{i}" for i in range(1, 11)} <= numbers


# ---------------------------------------------------------------- the checker itself

def test_parsing_of_headings_and_citations():
    doc = "# Title\n\n## 2. One step\n### 2.5 Scalings\n#### 2.5.1 Detail\n## Unnumbered\n### 10.2 Bugs\n"
    assert section_numbers(doc) == ["2", "2.5", "2.5.1", "10.2"]
    text = ("a (docs/method.md 2.1-2.4) b docs/method.md 2.6 and 2.8; docs/architecture.md 4.\n"
            "docs/method.md 2.10, 3 then docs/operations.md and docs/method.md § 7.1: x\n"
            'docs/serving.md "Canary rollout" and "docs/operations.md", "x"\n')
    assert find_citations(text) == [(1, "method.md", ["2.1", "2.4"]), (1, "method.md", ["2.6", "2.8"]),
                                    (1, "architecture.md", ["4"]), (2, "method.md", ["2.10", "3"]),
                                    (2, "operations.md", []), (2, "method.md", ["7.1"]),
                                    (3, "serving.md", ['"Canary rollout"']), (3, "operations.md", [])]
    assert section_titles(doc) == {"title", "one step", "scalings", "detail", "unnumbered", "bugs"}


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def test_checker_reports_planted_bad_citations(tmp_path):
    old = "MET" + "HOD.md"   # spelled apart so this file does not cite it
    _plant(tmp_path, {
        "docs/method.md": "# Method\n## 2. Step\n### 2.5 Scalings\n### 2.6 Student\n",
        "docs/serving.md": "# Serving\n## Canary rollout\n",
        "rglcd/titled.py": '# docs/serving.md "Canary rollout", docs/serving.md "canary ROLLOUT"; docs/serving.md "Canary"\n',
        "docs/guide.md": "See [method](method.md), [gone](gone.md#x) and [web](https://example.com/a.md).\n",
        "rglcd/good.py": '"""Boundary scalings (docs/method.md 2.5); student (docs/method.md 2.5-2.6)."""\n',
        "rglcd/bad.py": ('"""One (docs/method.md 2.7).\n\nTwo (docs/method.md 2.5 and 9).\n'
                         f'Three (docs/nothing.md 1). Four ({old} 2.5).\n"""\n'),
        "components/k.py": "# (../shared/notes/k8s-testing.md §1.2), reference notes 2.3\n",
        "README.md": "[docs](docs/missing.md)\n",
    })
    problems = check_tree(tmp_path)
    assert sorted(problems) == sorted([
        "rglcd/bad.py:1: cites docs/method.md 2.7, which has no section 2.7",
        'rglcd/titled.py:1: cites docs/serving.md "Canary", which has no section "Canary"',
        "rglcd/bad.py:3: cites docs/method.md 9, which has no section 9",
        "rglcd/bad.py:4: cites docs/nothing.md, which does not exist",
        f"rglcd/bad.py:4: cites '{old}', a note outside the repository; cite docs/ instead",
        "components/k.py:1: cites 'shared/notes', a note outside the repository; cite docs/ instead",
        "components/k.py:1: cites 'k8s-testing.md', a note outside the repository; cite docs/ instead",
        "components/k.py:1: cites 'reference notes', a note outside the repository; cite docs/ instead",
        "docs/guide.md:1: links to gone.md, which does not exist",
        "README.md:1: cites docs/missing.md, which does not exist",
        "README.md:1: links to docs/missing.md, which does not exist",
    ])


def test_checker_reports_repeated_section_numbers(tmp_path):
    _plant(tmp_path, {"docs/a.md": "## 1. One\n### 1.1 A\n### 1.1 B\n", "rglcd/x.py": "# docs/a.md 1.1\n"})
    assert check_tree(tmp_path) == ["docs/a.md: section 1.1 appears 2 times"]


@pytest.mark.parametrize("text", ["docs/method.md 2.5", "see docs/method.md", "docs/method.md 2 and 2.5",
                                  'docs/method.md "Scalings"'])
def test_checker_accepts_what_exists(tmp_path, text):
    _plant(tmp_path, {"docs/method.md": "## 2. Step\n### 2.5 Scalings\n", "tests/t.py": f"# {text}\n"})
    assert check_tree(tmp_path) == []
