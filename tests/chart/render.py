"""Renders the chart with Helm's Go SDK and prints the manifests.

    python tests/chart/render.py VALUES_JSON RELEASE NAMESPACE [TEMPLATE]

The cluster tier uses it to register the chart's own MutatingWebhookConfiguration.
"""

import json
import pathlib
import sys

import helm_python as helm

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "django-migrate-webhook"


def main():
    values = json.loads(sys.argv[1])
    release, namespace = sys.argv[2], sys.argv[3]
    only = sys.argv[4] if len(sys.argv) > 4 else None
    rendered = helm.Chart.load(str(CHART)).render(values, name=release, namespace=namespace)
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        if only and not path.endswith("/" + only):
            continue
        print("---\n# " + path + "\n" + text.strip())


if __name__ == "__main__":
    main()
