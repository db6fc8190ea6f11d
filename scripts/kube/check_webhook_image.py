#!/usr/bin/env python3
"""Checks the webhook image that scripts/kube/build-images.sh built (a docker-archive
tarball): its OCI labels, its binary, and its CycloneDX SBOM.

- labels: org.opencontainers.image.{title,description,source,version,revision,licenses};
  version and licenses equal Cargo.toml's, revision equals --revision when given;
- /usr/local/bin/django-migrate-webhook is in the image;
- /step.pyz (what an image volume delivers) is a zip archive of exactly the step's sources
  (src/injected/step/**/*.py);
- /usr/share/doc/django-migrate-webhook/sbom.cdx.json is in the image, valid against the
  CycloneDX JSON schema of its specVersion (cyclonedx-python-lib, strict), names the
  package django-migrate-webhook at the Cargo.toml version, and describes the locked tree:
  every component is a crates.io package of Cargo.lock at its locked version, and every
  crate of `cargo tree -e normal` (the binary's dependencies on this platform) is there.

Exits 1 with every failure listed; prints the labels and the SBOM's size and counts.

    python3 scripts/kube/check_webhook_image.py webhook.tar --root . --revision SHA
"""

import argparse
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import tomllib

PACKAGE = "django-migrate-webhook"
BINARY = "usr/local/bin/django-migrate-webhook"
SBOM = "usr/share/doc/django-migrate-webhook/sbom.cdx.json"
PROGRAM = "step.pyz"
LABEL = "org.opencontainers.image."
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def check_program(data, root):
    """The program of an image volume: the step's sources, nothing else, nothing older."""
    if not data or data == b"<link>":
        return [f"/{PROGRAM} is not in the image (the Dockerfile copies it for codeDelivery: imageVolume)"]
    step = root / "src" / "injected" / "step"
    expected = {str(p.relative_to(step)): p.read_bytes() for p in sorted(step.rglob("*.py"))}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            found = {name: z.read(name) for name in z.namelist()}
    except zipfile.BadZipFile as e:
        return [f"/{PROGRAM} is not a zip archive: {e}"]
    if found != expected:
        differ = sorted(n for n in found.keys() | expected.keys() if found.get(n) != expected.get(n))
        return [f"/{PROGRAM} differs from src/injected/step in: {', '.join(differ[:10])}"]
    return []


def image_files(archive, wanted):
    """The config and the final content of the files `wanted` of a docker-archive image
    (layers applied in order, whiteouts honoured): (config, {path: bytes or None})."""
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        if len(manifest) != 1:
            raise SystemExit(f"{archive}: {len(manifest)} images in manifest.json, expected 1")
        config = json.load(outer.extractfile(manifest[0]["Config"]))
        found = dict.fromkeys(wanted)
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer), mode="r|*") as tar:
                for member in tar:
                    path = member.name.removeprefix("./").lstrip("/")
                    parent, _, base = path.rpartition("/")
                    if base.startswith(".wh."):
                        gone = f"{parent}/{base[4:]}".lstrip("/")
                        for name in found:
                            if name == gone or (base == ".wh..wh..opq" and name.startswith(f"{parent}/")):
                                found[name] = None
                    elif path in found:
                        if member.isfile():
                            found[path] = tar.extractfile(member).read()
                        elif member.islnk() or member.issym():
                            found[path] = b"<link>"
        return config, found


def schema_errors(text, spec_version):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    try:
        version = SchemaVersion.from_version(spec_version)
    except (ValueError, KeyError):
        return f"unknown CycloneDX specVersion {spec_version!r}"
    error = JsonStrictValidator(version).validate_str(text)
    return None if error is None else str(error)


def cargo_tree(root):
    """name@version of every crate of the binary's normal dependency tree (this platform)."""
    out = subprocess.run(
        ["cargo", "tree", "--locked", "-e", "normal", "--prefix", "none", "-f", "{p}"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    crates = set()
    for line in out.splitlines():
        name, version = line.split()[:2]
        if name != PACKAGE:
            crates.add(f"{name}@{version.lstrip('v')}")
    return crates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", help="the docker-archive tarball")
    parser.add_argument("--root", default=".", help="the repository (Cargo.toml, Cargo.lock)")
    parser.add_argument("--revision", help="the revision label the build was given")
    args = parser.parse_args()
    root = Path(args.root)
    manifest = tomllib.loads((root / "Cargo.toml").read_text())["package"]
    lock = tomllib.loads((root / "Cargo.lock").read_text())["package"]
    locked = {f"{p['name']}@{p['version']}": p.get("source") for p in lock}

    failures = []
    config, files = image_files(args.archive, [BINARY, SBOM, PROGRAM])

    labels = (config.get("config") or {}).get("Labels") or {}
    expected = {
        "title": PACKAGE,
        "version": manifest["version"],
        "licenses": manifest["license"],
        "revision": args.revision,
    }
    for key in ("title", "description", "source", "version", "revision", "licenses"):
        value = labels.get(LABEL + key)
        print(f"label {LABEL}{key}={value}")
        if not value:
            failures.append(f"label {LABEL}{key} is missing or empty")
        elif expected.get(key) and value != expected[key]:
            failures.append(f"label {LABEL}{key} is {value!r}, expected {expected[key]!r}")
    source = labels.get(LABEL + "source") or ""
    if source and not source.startswith("https://"):
        failures.append(f"label {LABEL}source is not an https URL: {source!r}")

    if not files[BINARY]:
        failures.append(f"/{BINARY} is not in the image")
    failures += check_program(files[PROGRAM], root)

    text = files[SBOM]
    if text is None:
        failures.append(f"/{SBOM} is not in the image")
    else:
        try:
            bom = json.loads(text)
        except ValueError as e:
            bom = None
            failures.append(f"/{SBOM} is not JSON: {e}")
        if isinstance(bom, dict):
            failures += check_bom(bom, text, manifest, locked, cargo_tree(root))

    if failures:
        print(f"{args.archive}: {len(failures)} check(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(f"{args.archive}: labels, binary and SBOM ok")
    return 0


def check_bom(bom, text, manifest, locked, tree):
    failures = []
    spec = bom.get("specVersion")
    if bom.get("bomFormat") != "CycloneDX":
        failures.append(f"SBOM bomFormat is {bom.get('bomFormat')!r}, not 'CycloneDX'")
    error = schema_errors(text.decode(), str(spec))
    if error:
        failures.append(f"SBOM is not valid CycloneDX {spec}: {error}")
    subject = (bom.get("metadata") or {}).get("component") or {}
    if (subject.get("name"), subject.get("version")) != (PACKAGE, manifest["version"]):
        failures.append(
            f"SBOM describes {subject.get('name')!r} {subject.get('version')!r}, "
            f"not {PACKAGE!r} {manifest['version']!r}"
        )
    components = bom.get("components") or []
    listed = {f"{c.get('name')}@{c.get('version')}" for c in components}
    unlocked = sorted(c for c in listed if locked.get(c) != CRATES_IO)
    if unlocked:
        failures.append(f"SBOM components not in Cargo.lock from crates.io: {', '.join(unlocked[:10])}")
    missing = sorted(tree - listed)
    if missing:
        failures.append(f"crates of the binary's tree missing from the SBOM: {', '.join(missing[:10])}")
    scopes = Counter(c.get("scope", "required") for c in components)
    required = {f"{c.get('name')}@{c.get('version')}" for c in components if c.get("scope", "required") == "required"}
    extra = sorted(required - tree)
    print(
        f"SBOM /{SBOM}: {len(text)} bytes, CycloneDX {spec}, "
        f"{subject.get('name')} {subject.get('version')}, {len(components)} components "
        f"({', '.join(f'{n} {s}' for s, n in sorted(scopes.items()))}), "
        f"{len(bom.get('dependencies') or [])} dependency entries; "
        f"{len(tree) - len(missing)} of the {len(tree)} crates of `cargo tree -e normal` listed; "
        f"required beyond it (features or optional dependencies resolved for the whole "
        f"package): {' '.join(extra) or 'none'}"
    )
    return failures


if __name__ == "__main__":
    sys.exit(main())
