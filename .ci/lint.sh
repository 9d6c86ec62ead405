# shellcheck shell=bash
# .ci/lint.sh: `./build.sh shellcheck`, the lint of every shell file of the
# project (build.sh, .ci/, packaging/, tests/), a step of `./build.sh test`.

# shell_scripts: the project's shell files, found by what they say they
# are, not by a list: a name ending in .sh, a #! line naming sh, bash or
# dash, or (for files that are only sourced, such as the jobs here,
# packaging/arches.sh and tests/salt_pins) a `# shellcheck shell=` directive
# in their first lines. (A new .ci/*.sh without that directive is found by
# its name, and shellcheck then fails it for naming no shell.)
# NUL-separated.
shell_scripts() {
    local name
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' name; do
            [ -f "$name" ] || continue
            if [[ "$name" == *.sh ]] || head -n 1 "$name" | grep -Eq '^#!.*[/ ](ba|da)?sh( |$)' ||
                head -n 5 "$name" | grep -Eq '^# shellcheck shell='; then
                printf '%s\0' "$name"
            fi
        done
}

# lint_shell: shellcheck every shell file, following what they source;
# any finding (style included) fails the build.
lint_shell() {
    local scripts=()
    mapfile -d '' -t scripts < <(shell_scripts)
    [ ${#scripts[@]} -gt 0 ] || { echo "build.sh: found no shell scripts to lint" >&2; exit 1; }
    say "shellcheck $(shellcheck --version | sed -n 's/^version: //p') on ${#scripts[@]} files: ${scripts[*]}"
    shellcheck --external-sources "${scripts[@]}"
}
