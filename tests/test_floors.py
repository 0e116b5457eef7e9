"""The floors: the research modules import nothing of the application, and no modules import each
other in a circle, function-local imports counted (read from the source with `ast`)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESEARCH = ("sde_lib", "models", "samplers", "likelihood")
APPLICATION = ("score_toolkit", "main")


def modules() -> dict:
    """{module name: path} of every .py file of the installed floors."""
    out = {}
    for top in RESEARCH + APPLICATION:
        paths = [ROOT / f"{top}.py"] if (ROOT / f"{top}.py").is_file() else sorted((ROOT / top).rglob("*.py"))
        for path in paths:
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: pathlib.Path, known: dict) -> set:
    """The known modules that `name` imports anywhere in its file. `from pkg import x` counts as an
    import of the submodule pkg.x where x is one, else of pkg itself (its __init__, whose own imports
    count too: a circle through a package's __init__ is a circle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            # Importing pkg.sub runs pkg/__init__ first: the parents count, but for the importer's own.
            while t and t != name:
                if not name.startswith(t + "."):
                    found.add(t)
                t = t.rpartition(".")[0]
    return found


def circles(graph: dict) -> list:
    """The modules that reach themselves through the import graph."""
    reach = {m: set(ts) for m, ts in graph.items()}
    changed = True
    while changed:  # the transitive closure: small graphs, so the plain fixed point
        changed = False
        for m in reach:
            new = set().union(*(reach.get(t, set()) for t in reach[m])) - reach[m]
            if new:
                reach[m] |= new
                changed = True
    return sorted(m for m in reach if m in reach[m])


GRAPH = {m: imports(m, p, modules()) for m, p in modules().items()}


def test_the_research_modules_import_nothing_of_the_application():
    back = sorted((m, t) for m, ts in GRAPH.items() for t in ts
                  if m.split(".")[0] in RESEARCH and t.split(".")[0] in APPLICATION)
    assert back == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(GRAPH) == []


def test_a_circle_through_a_package_init_is_found(tmp_path):
    # The shape the floors forbid: a bottom module importing a package whose __init__ reaches it again,
    # here through the __init__ that `from samplers.grids import ...` runs before samplers.grids.
    planted = tmp_path / "analytic.py"
    planted.write_text("from samplers.grids import get_grid\n")
    edges = imports("sde_lib.analytic", planted, modules())
    assert edges == {"samplers", "samplers.grids"}
    fake = {**GRAPH, "sde_lib.analytic": GRAPH["sde_lib.analytic"] | edges}
    assert "sde_lib.analytic" in circles(fake) and "samplers.base" in circles(fake)


def test_the_reading_sees_the_imports_it_must():
    # A check that reads nothing passes trivially: the known edges must be there.
    assert "sde_lib" in GRAPH["samplers.base"] and "samplers" in GRAPH["score_toolkit.factories"]
    assert "sde_lib.analytic" in GRAPH["sde_lib"] and "samplers.base" in GRAPH["samplers"]  # __init__s count
    assert "score_toolkit.errors" in GRAPH["score_toolkit.checkpoints"]
    assert "score_toolkit.training" in GRAPH["score_toolkit.cli"]  # a function-local import
