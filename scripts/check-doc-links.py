#!/usr/bin/env python3
"""Fails on a broken internal link in the built book (docs/book) or in README.md.

In the book: every relative href/src of every page must name a file the build produced, and
its #fragment an id on that page (so a renamed heading breaks the build, not a reader's click).
In README.md: every relative link must name a file of the repository, and an anchor into a
Markdown file must match one of its headings (GitHub's slugs).
Usage: scripts/check-doc-links.py [docs/book]
"""
import html.parser
import pathlib
import re
import sys
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("href", "src") and value:
                self.links.append(value)


def external(link):
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", link)) or link.startswith("//")


def check_book(book):
    pages, problems = {}, []
    for path in book.rglob("*.html"):
        page = Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path.resolve()] = page
    if len(pages) < 5:
        return [f"{book}: only {len(pages)} pages: was the book built?"]
    for path, page in pages.items():
        for link in page.links:
            if external(link):
                continue
            target, _, fragment = link.partition("#")
            target = urllib.parse.unquote(target)
            if target.startswith("/"):  # site-absolute (404.html): the book is the site
                dest = (book / target.lstrip("/")).resolve()
            else:
                dest = (path.parent / target).resolve() if target else path
            if dest.is_dir():
                dest = dest / "index.html"
            if not dest.exists():
                problems.append(f"{path.relative_to(book.resolve())}: {link}: no such file")
            elif fragment and dest.suffix == ".html":
                ids = pages[dest].ids if dest in pages else set()
                if urllib.parse.unquote(fragment) not in ids:
                    problems.append(f"{path.relative_to(book.resolve())}: {link}: no such anchor")
    return problems


def github_slugs(markdown):
    slugs, in_code = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        slugs.add(slug)
    return slugs


def check_readme():
    readme = ROOT / "README.md"
    problems = []
    text = readme.read_text(encoding="utf-8")
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if external(link):
            continue
        target, _, fragment = link.partition("#")
        dest = (ROOT / target) if target else readme
        if not dest.exists():
            problems.append(f"README.md: {link}: no such file")
        elif fragment and dest.suffix == ".md":
            if fragment not in github_slugs(dest.read_text(encoding="utf-8")):
                problems.append(f"README.md: {link}: no such heading")
    return problems


def main():
    book = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "book")
    problems = check_book(book) + check_readme()
    for problem in problems:
        print(f"broken link: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"doc links: {book} and README.md, no broken internal link")


if __name__ == "__main__":
    main()
