#!/bin/sh
# hello: the example desktop flow. deskrun runs it as the connection's user,
# in the package's directory, with each input as DESKRUN_INPUT_<NAME>; what
# it writes to $DESKRUN_OUTPUT (a JSON object) becomes the run's outputs.
set -eu

greeting="hello, ${DESKRUN_INPUT_WHO:-world}"
if [ "${DESKRUN_INPUT_SHOUT:-false}" = true ]; then
	greeting=$(printf '%s' "$greeting" | tr '[:lower:]' '[:upper:]')
fi

echo "uid:    $(id -u) ($(id -un))"
echo "dir:    $(pwd)"
echo "inputs:"
env | grep '^DESKRUN_INPUT_' | sort | sed 's/^/  /' || true

i=0
while [ "$i" -lt "${DESKRUN_INPUT_TIMES:-1}" ]; do
	echo "$greeting"
	i=$((i + 1))
done

if [ -n "${DESKRUN_OUTPUT:-}" ]; then
	# The greeting is plain text from an input: escape it for JSON.
	json=$(printf '%s' "$greeting" | sed 's/\\/\\\\/g; s/"/\\"/g')
	printf '{"greeting": "%s"}\n' "$json" >"$DESKRUN_OUTPUT"
fi
