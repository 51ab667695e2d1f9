#!/bin/sh
# xdriver backdoor: runs framed commands from the host as root, on the
# virtio-serial port named org.xdriver.backdoor. Plain POSIX sh (dash on
# Debian, FreeBSD's sh): nothing here needs bash, and commands run in it.
# (Not on hvc0: QEMU drops console-port output when the host reads slower
# than the guest writes -- see flush_buf() in hw/char/virtio-console.c --
# while a plain port throttles the guest instead, so no byte is lost.)
# Protocol (see docs/architecture.md):
#   host -> guest: "X <id> <timeout-s> <stream> <cmd as printf %b escapes> <base64 stdin|->\n"
#   guest -> host: "XDO <id> <base64>\n" (stdout), "XDE <id> <base64>\n"
#                  (stderr), "XDX <id> <exit-code>\n" (done)
# Everything inbound is one line read by the shell's `read`, which reads a
# byte at a time from a device, so no other program may read the port.
# The command arrives as printf %b escapes (\0NNN for every byte that is
# not plain ASCII text); it is written to a file by the printf builtin and
# sourced in a forked subshell, so a command costs one fork and no exec
# (a process start is ~35 ms under TCG). Its output goes to files of its
# own, not pipes, so a background child that keeps stdout open can stall
# neither this reply (the NixOS driver's known hang) nor the next one.
# Deadlines are kept by one watchdog process started here, which the shell
# tells about each command through a FIFO (builtins only); on expiry it
# does what `timeout -k 5` does to the command and all it started.
# The OS-specific parts (finding the port, base64, file sizes) are spliced
# in below from the guest's OS profile.
# Started by init with the console as controlling terminal, the shell
# would die of the SIGHUP a getty's vhangup() sends when it takes the
# serial line; commands get the default disposition back below.
trap '' HUP
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# --- nixos ---
export PATH=/run/wrappers/bin:/run/current-system/sw/bin:$PATH
find_port() {
  port=
  for d in /sys/class/virtio-ports/*; do
    [ -e "$d/name" ] || continue
    n=; read -r n <"$d/name"
    [ "$n" = org.xdriver.backdoor ] && [ -c "/dev/${d##*/}" ] && port=/dev/${d##*/}
  done
  if [ -z "$port" ] && [ -z "${port_probed-}" ]; then port_probed=1; modprobe -q virtio_console 2>/dev/null; fi
}
b64enc() { base64 -w0; }
b64dec() { base64 -d; }
fsize() { stat -c %s "$1"; }
# ---
# For running the script off a VM (driver/tests/backdoor_sh.rs): a pty as
# the port, a directory of its own.
# Otherwise the OS part's find_port, tried every 0.1 s for up to 30 s: the
# port's driver may come up after this shell (an exit here would cost the
# init's restart delay, 5 s and more).
if [ -n "${XDRIVER_BACKDOOR_PORT:-}" ]; then
  port=$XDRIVER_BACKDOOR_PORT
else
  i=0; find_port
  while [ -z "$port" ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); find_port; done
fi
[ -n "$port" ] || { echo "xdriver backdoor: no org.xdriver.backdoor port" >/dev/console; sleep 5; exit 1; }
# One open, read-write: a virtio-serial port refuses a second open (EBUSY).
exec 0<>"$port" 1>&0 2>/dev/null || { echo "xdriver backdoor: cannot open $port" >/dev/console; sleep 5; exit 1; }
export HOME=/root LANG=C.UTF-8 TERM=dumb
w=/run
[ -d "$w" ] || w=/var/run
w=${XDRIVER_BACKDOOR_DIR:-$w/xdriver-backdoor}
rm -rf "$w"; mkdir -p -m 0700 "$w"
# Signals a process and everything below it (pgrep -P: Linux's procps and
# FreeBSD's base both have it). The whole tree is stopped first (listed
# twice, for a child forked while the first list was made), then signalled,
# then continued: no process sees a child die and carries on (a shell
# would run the next line) before its own signal arrives.
pidtree() {
  printf '%s ' "$1"
  for c in $(pgrep -P "$1" 2>/dev/null); do pidtree "$c"; done
}
killtree() {
  kt=$(pidtree "$2"); kill -s STOP $kt 2>/dev/null
  kt=$(pidtree "$2"); kill -s STOP $kt 2>/dev/null
  kill -s "$1" $kt 2>/dev/null; kill -s CONT $kt 2>/dev/null
}
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
# The watchdog: reads "<dir> <id> <pid> <timeout-s>" lines and, unless the
# command's done marker appears first, TERMs its tree at the deadline and
# KILLs it five seconds later. A command already done when its line is
# read costs nothing (no sleep), so the queue never falls behind.
mkfifo -m 0600 "$w/deadlines"
(
  trap '' HUP
  exec 3<>"$w/deadlines"
  while read -r dd did dpid dtmo <&3; do
    n=0
    while [ -d "$dd" ] && [ ! -e "$dd/done.$did" ]; do
      if [ "$n" -ge "$dtmo" ]; then
        : >"$dd/killed.$did"
        killtree TERM "$dpid"
        k=0
        while [ -d "$dd" ] && [ ! -e "$dd/done.$did" ] && [ "$k" -lt 5 ]; do sleep 1; k=$((k + 1)); done
        [ -e "$dd/done.$did" ] || killtree KILL "$dpid"
        break
      fi
      sleep 1; n=$((n + 1))
    done
  done
) </dev/null >/dev/null 2>&1 &
exec 4>"$w/deadlines"
# Until QEMU has told the guest that the host side is connected, the port
# reads as EOF (and a write may fail): that is not the end of the session,
# so retry rather than exit (an exit would make the init restart us and
# announce again, which the host takes for a crash).
# The shell's pid names this instance: the host takes a repeated line with
# the same pid for what it is, not for a restart.
until printf '\nXDRIVER-BACKDOOR-READY 1 %s\n' "$$"; do sleep 0.05; done
# Each command's files live in a generation directory; every 64 commands a
# new one starts and the one before the last goes (one rm for 64 commands).
n=0; g=$w/g0; mkdir "$g"
while :; do
  if ! IFS=' ' read -r tag id tmo stream cmd input; then sleep 0.05; continue; fi
  [ "$tag" = X ] || continue
  printf '%b' "$cmd" >"$g/cmd.$id"
  out=$g/out.$id; err=$g/err.$id; in=/dev/null
  if [ "$input" != - ]; then in=$g/in.$id; printf '%s' "$input" | b64dec >"$in"; fi
  (
    trap - HUP
    exec 4>&-
    xdriver_command=$g/cmd.$id
    unset tag id tmo stream cmd input n g w port out err in off sz pid fl rc i d port_probed
    cd /root && . "$xdriver_command"
  ) <"$in" >"$out" 2>"$err" &
  pid=$!; fl=
  [ "$tmo" -gt 0 ] && printf '%s %s %s %s\n' "$g" "$id" "$pid" "$tmo" >&4
  # Streaming: a flusher in the background sends what the files gained
  # every 50 ms, and the rest once the command is done; it is the only
  # writer on the port meanwhile.
  if [ "$stream" = 1 ]; then
    (
      oo=0; eo=0
      while [ ! -e "$g/done.$id" ]; do
        emit O "$out" $oo; oo=$off; emit E "$err" $eo; eo=$off
        sleep 0.05
      done
      emit O "$out" $oo; emit E "$err" $eo
    ) </dev/null 2>/dev/null &
    fl=$!
  fi
  wait "$pid"; rc=$?
  : >"$g/done.$id"
  [ -e "$g/killed.$id" ] && rc=124
  if [ -n "$fl" ]; then
    wait "$fl"
  else
    if [ -s "$out" ]; then printf 'XDO %s ' "$id"; b64enc <"$out"; printf '\n'; fi
    if [ -s "$err" ]; then printf 'XDE %s ' "$id"; b64enc <"$err"; printf '\n'; fi
  fi
  printf 'XDX %s %s\n' "$id" "$rc"
  n=$((n + 1))
  if [ $((n % 64)) -eq 0 ]; then
    rm -rf "$w/g$((n / 64 - 2))"
    g=$w/g$((n / 64)); mkdir "$g"
  fi
done
