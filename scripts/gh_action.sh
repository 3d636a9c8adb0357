#!/usr/bin/env bash
# Run one smcheck command as a GitHub Actions step (what action.yml runs; usable anywhere):
#
#   1. the command with --format markdown: the report is appended to the job summary;
#   2. the same command with --format github: its findings become annotations (workflow
#      commands on stdout, which the runner turns into ::error/::warning marks);
#   3. the step exits with smcheck's status: 0 pass, 1 findings, 2 bad input/usage,
#      3 internal error - so it fails on findings.
#
# The command runs twice because a command writes one format per run; smcheck's analyses are
# deterministic, so both runs see the same findings (use small CI fixtures).
#
# Environment:
#   SMCHECK_COMMAND      smcheck's arguments, shell-quoted, without --format/--output, e.g.
#                        eval tests/fixtures/logits.npy --labels tests/fixtures/labels.npy --dtype float16
#                        (split like a shell would, but never evaluated: no $(...), no globbing)
#   SMCHECK_PYTHON       the Python that has smcheck installed (default: python3)
#   GITHUB_STEP_SUMMARY  the file the Markdown is appended to (set by the runner; without it
#                        the Markdown goes to stdout)
set -euo pipefail

py="${SMCHECK_PYTHON:-python3}"
# Every Python call runs with -P (3.11+): `python -m X` and `python -c` put the working
# directory - the repository under test - first on sys.path, so a click.py, numpy.py or
# shlex.py committed there would run inside this step. -P leaves it out; PYTHONPATH and the
# installed packages still count (-I would also drop a --user install).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# %, CR and LF would end or corrupt a workflow command: GitHub's escapes for its data part
escape() {
  local s="$1"
  s="${s//'%'/%25}"
  s="${s//$'\r'/%0D}"
  s="${s//$'\n'/%0A}"
  printf '%s' "$s"
}

# append stdin to the job summary (stdout when not on a runner)
to_summary() {
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
    cat >> "$GITHUB_STEP_SUMMARY"
  else
    cat
  fi
}

fail_usage() {
  echo "::error title=smcheck action::$(escape "$1")"
  printf '### smcheck: error\n\n%s\n' "$1" | to_summary
  exit 2
}

if [[ -z "${SMCHECK_COMMAND:-}" ]]; then
  fail_usage "the 'command' input is empty; e.g. 'eval logits.npy --labels labels.npy --dtype float16'"
fi

# split the command as a shell would (quotes, backslashes) without running anything
if ! "$py" -P -c 'import shlex, sys; sys.stdout.write("".join(a + "\0" for a in shlex.split(sys.argv[1])))' \
    "$SMCHECK_COMMAND" > "$tmp/args" 2> "$tmp/split.err"; then
  fail_usage "cannot split the command '$SMCHECK_COMMAND': $(tail -n 1 "$tmp/split.err")"
fi
args=()
while IFS= read -r -d '' a; do  # not mapfile: macOS runners may have bash 3.2
  args+=("$a")
done < "$tmp/args"
if (( ${#args[@]} == 0 )); then
  fail_usage "the 'command' input is blank; e.g. 'eval logits.npy --labels labels.npy --dtype float16'"
fi
for a in "${args[@]}"; do
  case "$a" in
    -f | -f?* | --format | --format=* | -o | -o?* | --output | --output=*)
      fail_usage "leave '$a' out of the command: the action chooses the formats and outputs" ;;
  esac
done

# 1. Markdown report -> job summary (stderr passes through to the log)
set +e
"$py" -P -m smcheck "${args[@]}" --format markdown > "$tmp/report.md" 2> "$tmp/stderr"
rc=$?
set -e
cat "$tmp/stderr" >&2
if (( rc >= 2 )); then
  # bad input, bad usage or an internal error: the one-line message is the whole story
  # smcheck's own errors are one line; click's usage errors end with their "Error: ..." line
  msg="$(grep -E '^(smcheck: |Error: )' "$tmp/stderr" | tail -n 1 || true)"
  [[ -n "$msg" ]] || msg="$(grep -v '^[[:space:]]*$' "$tmp/stderr" | tail -n 1 || true)"
  echo "::error title=smcheck (exit $rc)::$(escape "${msg:-smcheck exited with status $rc}")"
  {
    printf '### smcheck: error (exit %d)\n\n`smcheck %s`\n\n```\n' "$rc" "$SMCHECK_COMMAND"
    cat "$tmp/stderr"
    printf '```\n'
  } | to_summary
  exit "$rc"
fi
to_summary < "$tmp/report.md"

# 2. annotations (stdout) - the same analysis again, in GitHub's workflow-command format
set +e
"$py" -P -m smcheck "${args[@]}" --format github
rc2=$?
set -e
exit $(( rc2 > rc ? rc2 : rc ))
