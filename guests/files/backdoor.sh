#!/bin/bash
# xdriver backdoor: runs framed commands from the host as root, on the
# virtio-serial port named org.xdriver.backdoor. (Not on hvc0: QEMU drops
# console-port output when the host reads slower than the guest writes --
# see flush_buf() in hw/char/virtio-console.c -- while a plain port
# throttles the guest instead, so no byte is lost.) Protocol (see docs/architecture.md):
#   host -> guest: "X <id> <timeout-s> <stream> <cmd as printf %b escapes> <base64 stdin|->\n"
#   guest -> host: "XDO <id> <base64>\n" (stdout), "XDE <id> <base64>\n"
#                  (stderr), "XDX <id> <exit-code>\n" (done)
# Everything inbound is one line read by bash's `read`, which may buffer
# what it reads, so no other program may read the port.
# The command arrives as printf %b escapes (\xHH for every byte that is not
# plain ASCII text), so decoding it and starting it costs one fork of this
# shell and no exec: a command runs as `eval` in a subshell, in its own
# process group (set -m) so a timeout ends all of it, like timeout(1).
# Job notices (set -m) go to stderr, which is /dev/null here.
# Output goes to files, not pipes, so a background child that keeps stdout
# open cannot stall the reply (the NixOS driver's known hang).
# Started by init with the console as controlling terminal, the shell
# would die of the SIGHUP a getty's vhangup() sends when it takes the
# serial line; commands get the default disposition back below.
trap '' HUP
port=
for d in /sys/class/virtio-ports/*; do
  n=; read -r n <"$d/name" 2>/dev/null
  [ "$n" = org.xdriver.backdoor ] && port=/dev/${d##*/}
done
[ -n "$port" ] || { echo "xdriver backdoor: no org.xdriver.backdoor port" >/dev/console; sleep 5; exit 1; }
# One open, read-write: a virtio-serial port refuses a second open (EBUSY).
exec 0<>"$port" 1>&0 2>/dev/null || { echo "xdriver backdoor: cannot open $port" >/dev/console; sleep 5; exit 1; }
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
w=/run/xdriver-backdoor
rm -rf "$w"; mkdir -p -m 0700 "$w"
set -m
# Emit what a stream file gained since offset $3; sets $off to the new end.
flush() {
  local sz
  sz=$(stat -c %s "$w/$2" 2>/dev/null) || sz=$3
  off=$3
  if [ "$sz" -gt "$3" ]; then
    printf 'XD%s %s ' "$1" "$id"
    tail -c +$(($3 + 1)) "$w/$2" | head -c $((sz - $3)) | base64 -w0
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
while true; do
  if ! IFS=' ' read -r tag id tmo stream cmd input; then sleep 0.05; continue; fi
  [ "$tag" = X ] || continue
  printf -v cmd '%b' "$cmd"
  if [ "$input" != - ]; then base64 -d <<<"$input" >"$w/in"; in=$w/in; else in=/dev/null; fi
  (
    set +m
    trap - HUP
    unset -f flush
    unset tag id tmo stream input in port n d w off oo eo killed wd tk done rc pid st x
    cd /root && eval "$cmd"
  ) <"$in" >"$w/out" 2>"$w/err" &
  pid=$!; oo=0; eo=0; killed=0; wd=; tk=
  # The deadline is a sleep(1) in the background (timeout(1)'s job without
  # its exec on the command's path); bash's `wait -n` returns when the
  # command or the sleep ends, whichever is first. No `read -t` on a FIFO:
  # bash's read timeout is not reliable there.
  if [ "$tmo" -gt 0 ]; then sleep "$tmo" </dev/null >/dev/null 2>&1 & wd=$!; fi
  while true; do
    if [ "$stream" = 1 ] && [ -z "$tk" ]; then sleep 0.05 </dev/null >/dev/null 2>&1 & tk=$!; fi
    # The command may have ended while the sleeps above were started: this
    # job-control shell may then have cleaned its job up already, and
    # `wait -n` would not see it end (it would wait for the deadline).
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; rc=$?; break; fi
    done=
    wait -n -p done $pid $wd $tk
    st=$?
    if [ "$done" = "$pid" ]; then rc=$st; break; fi
    if [ -n "$tk" ] && [ "$done" = "$tk" ]; then
      tk=; flush O out $oo; oo=$off; flush E err $eo; eo=$off
      continue
    fi
    if [ -n "$wd" ] && [ "$done" = "$wd" ]; then
      # As timeout -k 5: TERM to the command's group, KILL five seconds later.
      if [ "$killed" = 0 ]; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        killed=1; sleep 5 </dev/null >/dev/null 2>&1 & wd=$!
      else
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
        wd=
      fi
      continue
    fi
    # Nothing we know ended (a stray signal): the check at the top of the
    # loop finds out whether the command is still there.
  done
  for x in $wd $tk; do kill "$x" 2>/dev/null; wait "$x" 2>/dev/null; done
  [ "$killed" = 1 ] && rc=124
  if [ "$stream" = 1 ]; then
    flush O out $oo; flush E err $eo
  else
    if [ -s "$w/out" ]; then printf 'XDO %s ' "$id"; base64 -w0 <"$w/out"; printf '\n'; fi
    if [ -s "$w/err" ]; then printf 'XDE %s ' "$id"; base64 -w0 <"$w/err"; printf '\n'; fi
  fi
  printf 'XDX %s %s\n' "$id" "$rc"
  : >"$w/out"; : >"$w/err"
  [ "$in" = /dev/null ] || rm -f "$in"
done
