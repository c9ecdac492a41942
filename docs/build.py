"""Builds the API reference of jaxnorm from its docstrings with pdoc; fails on any warning.

    python docs/build.py [OUT]          # OUT defaults to docs/api/ (make docs)

OUT is created if needed and must be empty or hold an earlier build: the build records the
files it wrote (``OUT/.api-pages``), replaces them the next time (a removed module's page
goes), and leaves anything else in OUT alone; it refuses a non-empty folder it did not write.

Every public module of the package is documented, not only those a package's
``__all__`` names (pdoc's default would skip e.g. ``jaxnorm.modes``, ``jaxnorm.study`` and
every ``jaxnorm.analysis.<study>``); private modules (``_registry``, ``_tree``, ...) are
left out. Docstrings are read as Google style, which in pdoc includes the reST roles
(``:func:``, ``:mod:``, ``:class:``) the docstrings use.

"Without warnings" means two checks, and the build exits with status 1 naming each
problem if either fails:

* every warning raised while pdoc imports and renders the modules (import errors,
  annotations it cannot resolve, source it cannot parse, deprecations of the code
  being documented) is an error;
* every cross-reference role in a docstring to a ``jaxnorm`` name (``:func:`~jaxnorm.x.f```,
  ``:mod:``, ``:class:``, ``:data:``, ...) must become a link: pdoc leaves one it cannot
  resolve as plain code without a word, so the build looks for such names itself. (Plain
  code such as ````jaxnorm.studies```` -- an entry-point group, not an object -- is not a
  reference and is not checked.)

Three conventions of the docstrings that pdoc does not know are taught to it for the
build (:func:`_conventions`; only this process sees the change, undone afterwards):

* ``#:`` comments above (or after) an assignment document that constant or attribute,
  as in Sphinx autodoc (pdoc reads only a string literal after the assignment);
* ``:func:`~jaxnorm.x.f``` -- Sphinx's ``~`` (show the last component) -- is read as
  ``:func:`jaxnorm.x.f``` (pdoc would print the ``~`` and link the rest);
* signatures are resolved in the module their annotations were written in: the
  ``__new__`` that ``typing.NamedTuple`` generates (its module is a synthetic
  ``namedtuple_<Name>``, so string annotations under ``from __future__ import
  annotations`` fail), and functions re-exported under another module's name (jax's
  initializers say ``jax.nn.initializers``, where ``Array`` is not defined).

Kept out of the library on purpose: building docs is not something jaxnorm's users import.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import html
import importlib
import io
import pathlib
import pkgutil
import re
import sys
import textwrap
import tokenize
import warnings
from typing import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "api"
PACKAGE = "jaxnorm"


class DocsBuildError(RuntimeError):
    """The build produced warnings or unresolved cross-references (listed in the message)."""


def public_modules(package: str = PACKAGE) -> list[str]:
    """The package and every submodule none of whose path components starts with ``_``, sorted."""
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


_ROLE_TILDE = re.compile(r"(:(?:py:)?(?:mod|func|data|const|class|meth|attr|exc|obj):`)~")
_ROLE_TARGET = re.compile(r":(?:py:)?(?:mod|func|data|const|class|meth|attr|exc|obj):`~?([^`]+)`")

#: The targets of the reST roles of every docstring rendered so far (filled while rendering).
ROLE_TARGETS: set[str] = set()


def comment_docstrings(source: str, *, in_class: bool = False) -> dict[str, str]:
    """``name -> text`` of the ``#:`` comments of the assignments at the top level of
    ``source`` (a module's, or a class's when ``in_class``): the block of ``#:`` lines
    right above an assignment, or a ``#:`` comment at the end of its first line."""
    source = textwrap.dedent(source)
    tree = ast.parse(source)
    body = tree.body[0].body if in_class else tree.body
    comments = {}  # line number -> (text, whether the comment is the whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.string.startswith("#:"):
            comments[tok.start[0]] = (tok.string[2:].strip(), not tok.line[: tok.start[1]].strip())
    out = {}
    for node in body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        names = [n.id for target in targets for n in ([target] if isinstance(target, ast.Name) else getattr(target, "elts", [])) if isinstance(n, ast.Name)]
        block, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            block.insert(0, comments[line][0])
            line -= 1
        if not block and node.lineno in comments:
            block = [comments[node.lineno][0]]
        for name in names if block else ():
            out[name] = "\n".join(block)
    return out


@contextlib.contextmanager
def _conventions(modules: list[str]) -> Iterator[None]:
    """Teaches pdoc the docstring conventions of the module docstring for the duration of
    the block; restores pdoc's functions and every ``__module__`` it changed on exit."""
    import pdoc.doc_ast
    import pdoc.docstrings

    walk_tree, rst = pdoc.doc_ast.walk_tree, pdoc.docstrings.rst

    def walk_tree_with_comments(obj):
        info = walk_tree(obj)
        try:
            comments = comment_docstrings(pdoc.doc_ast.get_source(obj), in_class=isinstance(obj, type))
        except (SyntaxError, IndexError, tokenize.TokenError):  # no source (a builtin, a generated class): nothing to add
            return info
        if not comments:
            return info
        return dataclasses.replace(info, var_docstrings={**comments, **info.var_docstrings})

    def rst_with_tilde(contents, source_file):
        ROLE_TARGETS.update(_ROLE_TARGET.findall(contents))
        return rst(_ROLE_TILDE.sub(r"\1", contents), source_file)

    changed: list[tuple[object, str]] = []

    def point(fn, module_name: str) -> None:
        if getattr(fn, "__module__", module_name) != module_name:
            changed.append((fn, fn.__module__))
            fn.__module__ = module_name

    # convert() caches its results: cleared so that every docstring passes through the wrappers
    # (and so that their results do not outlive the build).
    pdoc.docstrings.convert.cache_clear()
    pdoc.doc_ast.walk_tree, pdoc.docstrings.rst = walk_tree_with_comments, rst_with_tilde
    try:
        for name in modules:
            module = sys.modules[name]
            for cls in vars(module).values():
                if not isinstance(cls, type) or cls.__module__ != name:
                    continue
                if issubclass(cls, tuple) and hasattr(cls, "_fields"):
                    point(cls.__new__, name)
                for attr in vars(cls).values():
                    glob = getattr(attr, "__globals__", None)
                    if callable(attr) and glob is not None and not glob.get("__name__", "").startswith(PACKAGE):
                        point(attr, glob["__name__"])
        yield
    finally:
        pdoc.doc_ast.walk_tree, pdoc.docstrings.rst = walk_tree, rst
        pdoc.docstrings.convert.cache_clear()
        for fn, old in reversed(changed):
            fn.__module__ = old


# A docstring's code span naming a jaxnorm object, not inside a link: <code>jaxnorm.a.b</code>.
_CODE_NAME = re.compile(r"<code>(jaxnorm(?:\.\w+)+)(?:\(\))?</code>")
_LINKED_CODE = re.compile(r"<a [^>]*>\s*<code>[^<]*</code>\s*</a>")
_DOCSTRING = re.compile(r'<div class="docstring">(.*?)</div>', re.S)


def owner_module(name: str) -> tuple[str | None, bool]:
    """``(module, found)`` for a dotted name: the longest prefix that imports as a module,
    and whether the rest of the name is an attribute path in it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return module_name, False
            obj = getattr(obj, attr)
        return module_name, True
    return None, False


def unresolved_references(
    out: pathlib.Path, rendered: list[str], pages: list[pathlib.Path] | None = None, targets: set[str] | None = None
) -> list[str]:
    """``'page: name (why)'`` for every jaxnorm name that a docstring's reST role names
    (``targets``, default :data:`ROLE_TARGETS`) and pdoc did not turn into a link in a
    rendered docstring (page paths relative to ``out``): a name that does not exist, one
    in a private module, or one pdoc could not link although its module was rendered. A
    name in a public module left out of ``rendered`` (a partial build) is not checked.
    ``pages``: the pages to read (default: every ``*.html`` below ``out``)."""
    targets = ROLE_TARGETS if targets is None else targets
    problems = []
    for page in sorted(pages if pages is not None else out.rglob("*.html")):
        if page.suffix != ".html":
            continue
        text = page.read_text(encoding="utf-8")
        for block in _DOCSTRING.findall(text):
            for name in _CODE_NAME.findall(_LINKED_CODE.sub("", block)):
                name = html.unescape(name)
                if name not in targets:
                    continue  # plain code, not a cross-reference
                module, found = owner_module(name)
                if not found:
                    why = "no such object"
                elif any(part.startswith("_") for part in module.split(".")):
                    why = f"in the private module {module}"
                elif module in rendered:
                    why = "not a documented public name"
                else:
                    continue
                problems.append(f"{page.relative_to(out)}: {name} ({why})")
    return sorted(set(problems))


#: The list of files a build wrote, kept in its output folder: the next build into the
#: folder deletes those it does not write again (a removed module's page), and a build
#: refuses a non-empty folder without one (it may hold anything).
MANIFEST = ".api-pages"


def _earlier_pages(out: pathlib.Path) -> list[pathlib.Path]:
    """The files an earlier build wrote into ``out`` ([] for a new or empty folder).

    Raises:
      ValueError: ``out`` is a file, or a non-empty folder that no build wrote into.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder.")
    if not out.is_dir() or not any(out.iterdir()):
        return []
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"{out} is not empty and holds no earlier API build ({MANIFEST}); refusing to write into it: name a new or empty folder.")
    pages = [out / line for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [p for p in pages if p.resolve().is_relative_to(out.resolve())]


def _render(modules: list[str], out: pathlib.Path) -> list[pathlib.Path]:
    """One page per module, the index and the search index; returns the files written.
    (Not ``pdoc.pdoc``: given modules by name it walks their submodules again, through
    ``__all__``, and warns about every module it meets twice.)"""
    import pdoc.doc
    import pdoc.render

    docs = {name: pdoc.doc.Module.from_name(name) for name in modules}
    written = []
    for name, module in docs.items():
        page = out / f"{name.replace('.', '/')}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(pdoc.render.html_module(module, docs), encoding="utf-8")
        written.append(page)
    (out / "index.html").write_text(pdoc.render.html_index(docs), encoding="utf-8")
    (out / "search.js").write_text(pdoc.render.search_index(docs), encoding="utf-8")
    return written + [out / "index.html", out / "search.js"]


def _replace_manifest(out: pathlib.Path, earlier: list[pathlib.Path], written: list[pathlib.Path]) -> None:
    """Deletes the earlier build's files this one did not write (and folders left empty),
    then records what this one wrote."""
    keep = set(written)
    for path in earlier:
        if path not in keep and path.is_file():
            path.unlink()
            folder = path.parent
            while folder != out and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    (out / MANIFEST).write_text("".join(f"{p.relative_to(out)}\n" for p in written), encoding="utf-8")


def build(out: pathlib.Path = DEFAULT_OUT, modules: list[str] | None = None) -> list[str]:
    """Renders ``modules`` (default: :func:`public_modules`) into ``out``; returns the
    module names rendered. ``out`` is created if needed; it must be empty or hold an
    earlier build (:data:`MANIFEST`), whose pages this build replaces.

    Raises:
      ValueError: ``out`` is a file, or a non-empty folder without an earlier build.
      DocsBuildError: a warning was raised while importing or rendering, or a docstring
        names a jaxnorm object that does not resolve; every one is listed.
    """
    import pdoc.render

    out = pathlib.Path(out)
    earlier = _earlier_pages(out)
    out.mkdir(parents=True, exist_ok=True)
    ROLE_TARGETS.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        modules = list(modules) if modules is not None else public_modules()
        for name in modules:
            importlib.import_module(name)
        pdoc.render.configure(docformat="google", search=True, show_source=True)
        with _conventions(modules):
            written = _render(modules, out)
    _replace_manifest(out, earlier, written)
    problems = [f"warning: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    problems += [f"unresolved reference: {p}" for p in unresolved_references(out, modules, written)]
    if problems:
        raise DocsBuildError(f"{len(problems)} problem(s) in the API docs build:\n" + "\n".join(problems))
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/build.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    try:
        modules = build(pathlib.Path(args.out))
    except (DocsBuildError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"API reference of {len(modules)} modules in {pathlib.Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    # Document the checkout this script is in (not another installed copy of jaxnorm).
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
