#!/usr/bin/env bash
# Makes Confero's voice prompts, tones and hold music: prompts/*.wav, all 16 kHz mono
# 16-bit PCM WAV (see prompts/README.md for when each is played and how to replace them).
#
# Needs espeak-ng (speech) and sox (everything else):
#     apt-get install espeak-ng sox
#
# Idempotent and reproducible: it overwrites the files with the same bytes on every run
# (no dither, sox's repeatable mode), so re-running it shows no change in git unless this
# script or the tools changed. The prompts are committed; nothing at build or run time
# calls this script.
#
# Usage: scripts/make-prompts.sh [output-dir]     (default: prompts/ in the repository)
# Environment: VOICE (espeak-ng voice, default en-us+f3), SPEED (words per minute, 150).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in espeak-ng sox; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "make-prompts: $tool is missing; install it with: apt-get install espeak-ng sox" >&2
    exit 1
  fi
done

out=${1:-prompts}
voice=${VOICE:-en-us+f3}
speed=${SPEED:-150}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -D: no dither (clean digital silence, same bytes every run); -R: repeatable; -V1: quiet.
sox=(sox -D -R -V1)
pcm16k=(-r 16000 -c 1 -b 16 -e signed-integer)

# ==== speech ====

# say NAME TEXT: speak, resample to 16 kHz, cut the rumble, trim the silence espeak-ng
# leaves at both ends, normalise the peak to -3 dBFS, then pad 100 ms of silence each end.
say() {
  local name=$1 text=$2
  espeak-ng -v "$voice" -s "$speed" -p 45 -a 120 -w "$tmp/raw.wav" "$text"
  "${sox[@]}" "$tmp/raw.wav" "${pcm16k[@]}" "$tmp/$name.wav" \
    rate -v 16k highpass 90 \
    silence 1 0.01 0.2% reverse silence 1 0.01 0.2% reverse \
    norm -3 pad 0.1 0.1
  mv "$tmp/$name.wav" "$out/$name.wav"
}

say enter-access-code "Please enter the access code, followed by the pound key."
say wrong-access-code "That access code is not correct."
say goodbye "Goodbye."
say too-many-attempts "There have been too many wrong access codes from your line. Please try again later."
say wait-for-administrator "The conference will begin when the administrator joins. Please wait."
say first-participant "You are the first participant."
say conference-starting "The administrator has joined. The conference is starting."
say administrator-left "The administrator has left the conference. Please wait."
say conference-ended "The conference has ended. Goodbye."
say conference-closed "This conference room has been closed. Goodbye."
say conference-locked "This conference is locked. Goodbye."

# ==== tones ====

# tone NAME F1 F2: two 125 ms notes (with 10 ms / 40 ms fades against clicks), peak
# -12 dBFS: a sine is much louder than speech at the same peak.
tone() {
  local name=$1 f1=$2 f2=$3
  "${sox[@]}" -n "${pcm16k[@]}" "$tmp/a.wav" synth 0.125 sine "$f1" fade q 0.01 0.125 0.04
  "${sox[@]}" -n "${pcm16k[@]}" "$tmp/b.wav" synth 0.125 sine "$f2" fade q 0.01 0.125 0.04
  "${sox[@]}" "$tmp/a.wav" "$tmp/b.wav" "${pcm16k[@]}" "$out/$name.wav" norm -12
}

tone join-tone 659.26 987.77  # E5 then B5: rising
tone leave-tone 987.77 659.26 # B5 then E5: falling

# ==== hold music ====
# C – Am – F – G at 80 bpm, one 3 s bar per chord: a plucked arpeggio in eighth notes over
# a soft sine pad, mellowed by a low-pass at 3.2 kHz, with a little reverb. Three rounds
# are rendered and the last two kept (24 s), so the reverb tail that opens the file is the
# one its own end leaves: the file loops without a seam. The notes sit in 110-590 Hz (their
# overtones above), where narrowband phones still play them.

# bar NAME "PAD-NOTES" "ARPEGGIO-NOTES (8)": one bar, in Hz.
bar() {
  local name=$1 pad=$2 arp=$3 spec=() delays=() i=0 f
  for f in $arp; do
    spec+=(pluck "$f")
    delays+=("$(awk -v i="$i" 'BEGIN { printf "%.3f", i * 0.375 }')")
    i=$((i + 1))
  done
  "${sox[@]}" -n -r 16000 -c 8 -b 16 "$tmp/arp.wav" synth 3 "${spec[@]}" \
    delay "${delays[@]}" remix - trim 0 3 fade q 0.005 3 0.08
  spec=()
  for f in $pad; do spec+=(sine "$f"); done
  "${sox[@]}" -n -r 16000 -c 3 -b 16 "$tmp/pad.wav" synth 3 "${spec[@]}" \
    remix - fade h 0.5 3 0.7
  "${sox[@]}" -m -v 1.0 "$tmp/arp.wav" -v 0.35 "$tmp/pad.wav" "${pcm16k[@]}" "$tmp/$name.wav"
}

#       name  pad (triad)              arpeggio (eighth notes)
bar c "261.63 329.63 392.00" "130.81 261.63 329.63 392.00 523.25 392.00 329.63 261.63"
bar am "220.00 261.63 329.63" "110.00 220.00 261.63 329.63 440.00 329.63 261.63 220.00"
bar f "220.00 261.63 349.23" "174.61 220.00 261.63 349.23 440.00 523.25 440.00 349.23"
bar g "246.94 293.66 392.00" "196.00 246.94 293.66 392.00 493.88 587.33 493.88 392.00"

round=("$tmp/c.wav" "$tmp/am.wav" "$tmp/f.wav" "$tmp/g.wav")
"${sox[@]}" "${round[@]}" "${round[@]}" "${round[@]}" "${pcm16k[@]}" "$out/hold-music.wav" \
  lowpass -2 3200 reverb 45 50 70 trim 12 24 norm -4

# ==== check ====
# Every file must be audible and of a sane length: a broken voice or sox build fails here.
printf '%-30s %8s %10s\n' file seconds "RMS dBFS"
for f in "$out"/*.wav; do
  secs=$(soxi -D "$f")
  rms=$(sox "$f" -n stats 2>&1 | awk '/^RMS lev dB/ { print $4 }')
  printf '%-30s %8.2f %10s\n' "$(basename "$f")" "$secs" "$rms"
  awk -v s="$secs" -v r="$rms" -v f="$f" 'BEGIN {
    if (s < 0.2 || s > 40 || r == "" || r < -40) { print "make-prompts: " f " looks wrong" > "/dev/stderr"; exit 1 }
  }'
done
