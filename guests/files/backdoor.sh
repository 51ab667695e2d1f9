#!/bin/sh
# xdriver backdoor: runs framed commands from the host as root, on the
# virtio-serial port named org.xdriver.backdoor. Plain POSIX sh (dash on
# Debian, FreeBSD's sh): nothing here needs bash. (Not on hvc0: QEMU drops
# console-port output when the host reads slower than the guest writes --
# see flush_buf() in hw/char/virtio-console.c -- while a plain port
# throttles the guest instead, so no byte is lost.) Protocol (see
# docs/architecture.md):
#   host -> guest: "X <id> <timeout-s> <stream> <cmd as printf %b escapes> <base64 stdin|->\n"
#   guest -> host: "XDO <id> <base64>\n" (stdout), "XDE <id> <base64>\n"
#                  (stderr), "XDX <id> <exit-code>\n" (done)
# Everything inbound is one line read by the shell's `read`, which reads a
# byte at a time from a device, so no other program may read the port.
# The command arrives as printf %b escapes (\0NNN for every byte that is
# not plain ASCII text). It runs in a new session (its own process group,
# so the deadline ends all of it, as timeout(1) does) under bash where the
# guest has bash (as the NixOS test driver's commands do), else sh.
# Output goes to files, not pipes, so a background child that keeps stdout
# open cannot stall the reply (the NixOS driver's known hang); each command
# has files of its own, so such a child cannot write into the next one's.
# The OS-specific parts (finding the port, base64, file sizes, how to start
# a new session) are spliced in below from the guest's OS profile.
# Started by init with the console as controlling terminal, the shell
# would die of the SIGHUP a getty's vhangup() sends when it takes the
# serial line; commands get the default disposition back below.
trap '' HUP
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
#@OS@
# For running the script off a VM (driver/tests/backdoor_sh.rs): a pty as
# the port, a directory of its own.
[ -n "${XDRIVER_BACKDOOR_PORT:-}" ] && port=$XDRIVER_BACKDOOR_PORT
[ -n "$port" ] || { echo "xdriver backdoor: no org.xdriver.backdoor port" >/dev/console; sleep 5; exit 1; }
# One open, read-write: a virtio-serial port refuses a second open (EBUSY).
exec 0<>"$port" 1>&0 2>/dev/null || { echo "xdriver backdoor: cannot open $port" >/dev/console; sleep 5; exit 1; }
export HOME=/root LANG=C.UTF-8 TERM=dumb
cmdsh=/bin/sh
[ -x /bin/bash ] && cmdsh=/bin/bash
w=/run
[ -d "$w" ] || w=/var/run
w=${XDRIVER_BACKDOOR_DIR:-$w/xdriver-backdoor}
rm -rf "$w"; mkdir -p -m 0700 "$w"
# Emit what a stream file gained since offset $3; sets $off to the new end.
emit() {
  sz=$(fsize "$2" 2>/dev/null) || sz=$3
  off=$3
  if [ "$sz" -gt "$3" ]; then
    printf 'XD%s %s ' "$1" "$id"
    tail -c +$(($3 + 1)) "$2" | head -c $((sz - $3)) | b64enc
    printf '\n'
    off=$sz
  fi
}
# Until QEMU has told the guest that the host side is connected, the port
# reads as EOF (and a write may fail): that is not the end of the session,
# so retry rather than exit (an exit would make the init restart us and
# announce again, which the host takes for a crash).
# The shell's pid names this instance: the host takes a repeated line with
# the same pid for what it is, not for a restart.
until printf '\nXDRIVER-BACKDOOR-READY 1 %s\n' "$$"; do sleep 0.05; done
while :; do
  if ! IFS=' ' read -r tag id tmo stream cmd input; then sleep 0.05; continue; fi
  [ "$tag" = X ] || continue
  # The x keeps trailing newlines from the command substitution.
  cmd=$(printf '%bx' "$cmd"); cmd=${cmd%x}
  out=$w/out.$id; err=$w/err.$id; in=/dev/null
  if [ "$input" != - ]; then in=$w/in.$id; printf '%s' "$input" | b64dec >"$in"; fi
  (
    trap - HUP
    cd /root && exec $newsession "$cmdsh" -c "$cmd"
  ) <"$in" >"$out" 2>"$err" &
  pid=$!; wd=; fl=
  rm -f "$w/killed" "$w/done"
  # The deadline: a watchdog in the background. It notes the kill before
  # it sends TERM to the command's process group (KILL five seconds
  # later, as timeout -k 5), so the status is reported as 124.
  if [ "$tmo" -gt 0 ]; then
    (
      trap 'kill $s 2>/dev/null; exit 0' TERM
      sleep "$tmo" & s=$!; wait $s
      : >"$w/killed"
      killtree TERM "$pid"
      sleep 5 & s=$!; wait $s
      killtree KILL "$pid"
    ) </dev/null >/dev/null 2>&1 &
    wd=$!
  fi
  # Streaming: a flusher in the background sends what the files gained
  # every 50 ms, and the rest once the command is done; it is the only
  # writer on the port meanwhile.
  if [ "$stream" = 1 ]; then
    (
      oo=0; eo=0
      while [ ! -e "$w/done" ]; do
        emit O "$out" $oo; oo=$off; emit E "$err" $eo; eo=$off
        sleep 0.05
      done
      emit O "$out" $oo; emit E "$err" $eo
    ) </dev/null 2>/dev/null &
    fl=$!
  fi
  wait "$pid"; rc=$?
  if [ -n "$wd" ]; then kill "$wd" 2>/dev/null; wait "$wd" 2>/dev/null; fi
  [ -e "$w/killed" ] && rc=124
  if [ -n "$fl" ]; then
    : >"$w/done"; wait "$fl"
  else
    if [ -s "$out" ]; then printf 'XDO %s ' "$id"; b64enc <"$out"; printf '\n'; fi
    if [ -s "$err" ]; then printf 'XDE %s ' "$id"; b64enc <"$err"; printf '\n'; fi
  fi
  printf 'XDX %s %s\n' "$id" "$rc"
  rm -f "$out" "$err" "$w/killed" "$w/done"
  [ "$in" = /dev/null ] || rm -f "$in"
done
