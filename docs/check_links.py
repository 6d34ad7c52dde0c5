#!/usr/bin/env python3
"""Checks the links between the README and docs/: every relative link names a file that
exists, and every #anchor a heading of that file (GitHub's slugs). Exits 1 naming each
broken link."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                               if f.endswith(".md"))


def slug(heading):
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    with open(os.path.join(ROOT, path)) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {slug(line) for line in text.splitlines() if line.startswith("#")}


def main():
    broken = []
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
        links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
        for link in links:
            if re.match(r"[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
            if not os.path.exists(os.path.join(ROOT, path)):
                broken.append(f"{page}: {link}: no file {path}")
            elif anchor and path.endswith(".md") and anchor not in anchors(path):
                broken.append(f"{page}: {link}: no heading #{anchor} in {path}")
    for line in broken:
        print(line)
    print(f"{len(PAGES)} pages, {len(broken)} broken links")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
