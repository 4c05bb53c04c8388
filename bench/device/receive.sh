# Source this at the start of a device call that carries one part of `bench/device/stage.sh NAME`:
#
#   source bench/device/receive.sh NAME && <command using $UPLOAD and the packages>
#
# Each call adds its part to /tmp/qanchor-upload/NAME (kept while the machine stays warm). When every
# part is there, it checks the staged checksum, unpacks once, and exports PYTHONPATH (the packages
# the device lacks, and the repository) and UPLOAD (the staged paths, by base name). Until then it
# says how many parts it holds and returns 1, so the command after `&&` does not run.
_receive() {
  local name=$1 src=.devbundle/upload/$1 dst=/tmp/qanchor-upload/$1 part count held
  mkdir -p "$dst/parts"
  for part in "$src"/*/part-*; do
    [ -e "$part" ] || continue
    if ! cmp -s "$(dirname "$part")/SHA256" "$dst/parts/SHA256"; then  # staged again: drop the old parts
      rm -rf "$dst" && mkdir -p "$dst/parts"
    fi
    cp "$part" "$(dirname "$part")/SHA256" "$dst/parts/"
  done
  part=$(ls "$dst/parts" | grep -m1 '^part-') || { echo "receive: no part of '$name' carried or held" >&2; return 1; }
  count=${part##*-of-}
  held=$(ls "$dst/parts" | grep -c '^part-')
  if [ "$held" -lt "$count" ]; then
    echo "receive: $name holds $held of $count parts; carry the others in the next calls" >&2
    return 1
  fi
  if [ ! -f "$dst/.unpacked" ]; then
    local i sum
    sum=$(for i in $(seq 1 "$count"); do cat "$dst/parts/part-$i-of-$count"; done | sha256sum | cut -d' ' -f1)
    if [ "$sum" != "$(cat "$dst/parts/SHA256")" ]; then
      echo "receive: $name's parts do not match the staged checksum; stage again" >&2
      return 1
    fi
    for i in $(seq 1 "$count"); do cat "$dst/parts/part-$i-of-$count"; done | tar -C "$dst" -xzf -
    touch "$dst/.unpacked"
  fi
  export PYTHONPATH="$dst/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" UPLOAD="$dst/files"
}
if _receive "${1:?usage: source bench/device/receive.sh NAME}"; then
  unset -f _receive
else
  unset -f _receive
  return 1
fi
