#!/usr/bin/env bash
# Replays the Dockerfile's build stage without a container engine (none runs here): builds the
# Docker context as Docker would (the working tree's files minus .dockerignore), copies into an
# empty folder exactly what the build stage COPYs, and builds the service there with --locked.
# A build stage that misses a file the manifest needs (a workspace member, a declared bench)
# fails here, as `docker build` would.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import fnmatch, os, shlex, shutil, subprocess, sys

work = sys.argv[1]
# The context: files git knows (tracked, or untracked and not ignored), minus .dockerignore.
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], check=True,
                       capture_output=True, text=True).stdout.split()
patterns = []
for line in open(".dockerignore"):
    line = line.strip()
    if line and not line.startswith("#"):
        patterns.append((line.startswith("!"), line.lstrip("!").strip("/")))

def ignored(path):
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, pattern in patterns:  # the last matching pattern wins, as in Docker
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            result = not negated
    return result

context = {f for f in files if os.path.isfile(f) and not ignored(f)}

# The build stage: from the first FROM to the next one.
stage, workdir = [], "/"
for line in open("Dockerfile"):
    words = line.split()
    if not words or words[0].startswith("#"):
        continue
    if words[0].upper() == "FROM" and stage:
        break
    stage.append(words)
for words in stage:
    op = words[0].upper()
    if op == "WORKDIR":
        workdir = words[1]
    elif op == "COPY":
        if any(w.startswith("--from") for w in words):
            continue
        *sources, dest = [w for w in words[1:] if not w.startswith("--")]
        base = os.path.join(work, workdir.lstrip("/"), dest)
        for source in sources:
            source = source.rstrip("/")
            matched = sorted(f for f in context if f == source or f.startswith(source + "/"))
            if not matched:
                sys.exit(f"Dockerfile: COPY {source}: not in the Docker context")
            for f in matched:
                if f == source:  # a file: into the destination folder (or as the destination)
                    target = os.path.join(base, os.path.basename(f)) if dest.endswith("/") else base
                else:            # a folder: its content into the destination
                    target = os.path.join(base, os.path.relpath(f, source))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(f, target)
PY
root="$work$(awk 'toupper($1)=="WORKDIR"{print $2; exit}' Dockerfile)"
echo "docker build stage replayed in $root: $(find "$root" -type f | wc -l) files"
# Shares ./target so that dependencies are not compiled twice (scripts/test.sh runs this last).
CARGO_TARGET_DIR="$PWD/target" cargo build --locked --quiet --bin certbound --manifest-path "$root/Cargo.toml"
echo "ok: the Dockerfile's build stage builds the service (--locked)"
