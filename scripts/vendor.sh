#!/usr/bin/env bash
# Fetch the JavaScript the HTML book needs (MathJax, require.js, the widget
# renderer) from the npm registry once, into _vendor/, so the built site loads
# nothing from other hosts. Skipped when _vendor/ is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
out=_vendor
[ -f "$out/.complete" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent mathjax@3.2.2 requirejs@2.3.8 \
    @jupyter-widgets/html-manager@1.0.15 >/dev/null)
for f in "$tmp"/*.tgz; do d="${f%.tgz}"; mkdir -p "$d"; tar xzf "$f" -C "$d"; done
rm -rf "$out"; mkdir -p "$out/mathjax" "$out/widgets"
mj="$tmp/mathjax-3.2.2/package"
cp "$mj/es5/tex-mml-chtml.js" "$out/mathjax/"
mkdir -p "$out/mathjax/output/chtml" "$out/mathjax/input/tex"
cp -r "$mj/es5/output/chtml/fonts" "$out/mathjax/output/chtml/"
cp -r "$mj/es5/input/tex/extensions" "$out/mathjax/input/tex/"
cp -r "$mj/es5/ui" "$mj/es5/a11y" "$out/mathjax/"
cp "$mj/LICENSE" "$out/mathjax/LICENSE"
cp "$tmp/requirejs-2.3.8/package/require.js" "$out/widgets/"
hm="$tmp/jupyter-widgets-html-manager-1.0.15/package"
cp "$hm"/dist/* "$out/widgets/"
rm -f "$out"/widgets/*.map
cp "$hm/LICENSE" "$out/widgets/LICENSE.html-manager" 2>/dev/null || true
printf 'MathJax 3.2.2 (Apache-2.0), RequireJS 2.3.8 (MIT), @jupyter-widgets/html-manager 1.0.15 (BSD-3-Clause), from the npm registry\n' > "$out/README.txt"
touch "$out/.complete"
echo "vendored JavaScript into $out/"
