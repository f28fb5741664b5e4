#!/bin/sh
# window: paints the display and opens a window, then leaves it up long
# enough for the screenshot. DISPLAY and XAUTHORITY are set by deskrun.
set -eu
echo "display $DISPLAY, user $(id -un)"
xsetroot -solid '#2b4a6f'
xmessage -center "${DESKRUN_INPUT_MESSAGE:-Hello}, $(id -un)" &
sleep 2
echo "window shown"
