"""The corpus of the differential test: minion configurations (and host facts)
written the way fleets write them -- PyYAML / Salt's `file.serialize`
(`safe_dump`: lists unindented under their key), Ansible's `to_nice_yaml`
(indent 4), hand-written files, config-management leftovers in minion.d/ --
plus every construct and lookup path the agent's src/minion/ covers.

Each case: `files` (paths under the case's root, which is mounted over /etc
in the test's namespace), and optionally `hostname` (the UTS name), `env`
(the minion's environment), `minion_args` (the salt-minion command line the
agent runs under, for `-c DIR`), `addresses` (IPv4 addresses added to the
namespace's loopback), `since` (the first Salt release with the option the
case is about: older Salts are not compared on it, and the run says so). Host files not given get the defaults in
`DEFAULT_HOST`. The expected id is never written here: Salt computes it.
"""

DEFAULT_HOST = {
    "etc/hostname": "node-default\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    # No answer from DNS, at once: the namespace has no network.
    "etc/resolv.conf": "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    # glibc (Salt's Python) and musl (the agent) read the same sources.
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
DEFAULT_HOSTNAME = "node-default"


def case(name, files=None, **extra):
    c = {"name": name, "files": dict(files or {})}
    c.update(extra)
    return c


def minion(text, **extra):
    """A case whose only Salt file is /etc/salt/minion."""
    return {"etc/salt/minion": text}


CASES = [
    # --- the main file, written by people and tools -----------------------
    case("plain id", minion("master: salt\nid: web-01\n")),
    case("id with comment", minion("id: web-02   # the web box\nmaster: salt\n")),
    case("id with hash inside", minion("id: web#3\n")),
    case("single-quoted id", minion("id: 'it''s-4'\n")),
    case("double-quoted id with escapes", minion('id: "tab\\tx\\u00e9-5"\n')),
    case("quoted key", minion("'id': quoted-key-6\n")),
    case("spaces before colon", minion("id : spaced-7\n")),
    case(
        "PyYAML safe_dump style: unindented multi-master list",
        minion("id: multi-8\nmaster:\n- salt1\n- salt2\nmaster_type: failover\n"),
    ),
    case(
        "unindented list before the id",
        minion("master:\n- salt1\n- salt2\nid: after-list-9\n"),
    ),
    case(
        "Ansible to_nice_yaml style (indent 4)",
        minion(
            "grains:\n    roles:\n    -   web\n    -   db\nid: ansible-10\n"
            "master:\n-   salt1\n-   salt2\n"
        ),
    ),
    case(
        "list of mappings",
        minion(
            "id: lom-11\nmine_functions:\n  network.ip_addrs:\n  - interface: eth0\n"
            "  - cidr: 10.0.0.0/8\nschedule:\n  job1:\n  - function: test.ping\n"
        ),
    ),
    case("folded block scalar id", minion("id: >-\n  folded-12\nmaster: salt\n")),
    case("literal block scalar id, stripped", minion("id: |-\n  literal-13\n")),
    case("literal block scalar id, kept newline", minion("id: |\n  literal-14\n")),
    case("folded id over two lines", minion("id: >-\n  part-a\n  part-b\n")),
    case("anchor and alias", minion("base: &name anchored-16\nid: *name\n")),
    case(
        "merge key brings the id",
        minion("defaults: &defaults\n  id: merged-17\n  master: salt\n<<: *defaults\n"),
    ),
    case(
        "merge key, explicit id wins",
        minion("defaults: &d {id: merged, master: salt}\n<<: *d\nid: explicit-18\n"),
    ),
    case(
        "merge from a list of mappings",
        minion("a: &a {master: m1}\nb: &b {id: from-b-19}\n<<: [*a, *b]\n"),
    ),
    case("!!str on a number", minion("id: !!str 0020\n")),
    case("integer id", minion("id: 21\n")),
    case("octal-looking id (Salt strips the zeros)", minion("id: 0022\n")),
    case("not octal: a string", minion("id: 0089\n")),
    case("hex id", minion("id: 0x1F\n")),
    case("underscored int", minion("id: 1_024\n")),
    case("sexagesimal int", minion("id: 1:30\n")),
    case("float id", minion("id: 1.5\n")),
    case("float with exponent", minion("id: 2.5e+3\n")),
    case("not a float (no exponent sign): a string", minion("id: 1.0e3\n")),
    case("boolean id", minion("id: yes\n")),
    case("null id (str(None))", minion("id: ~\n")),
    case("date-looking id (kept as text)", minion("id: 2024-01-31\n")),
    case("multi-line double-quoted id", minion('id: "multi\n  line-33"\n')),
    case("multi-line plain id", minion("id: plain\n  continued-34\n")),
    case("document is one flow mapping", minion("{id: flow-35, master: salt}\n")),
    case("flow mapping over lines", minion("{\n  id: flow-36,\n  master: [a, b]\n}\n")),
    case("explicit document markers", minion("%YAML 1.1\n---\nid: doc-37\n...\n")),
    case("BOM and CRLF", minion("\ufeffid: bom-38\r\nmaster: salt\r\n")),
    case("tabs after the value", minion("id: tabbed-39\t\t\n")),
    case("empty id falls through to the cache", {
        "etc/salt/minion": "id: ''\n",
        "etc/salt/minion_id": "cached-40\n",
    }),
    case("empty main file", minion(""), hostname="empty-main-41"),
    case("comments only", minion("# nothing here\n#id: commented\n"), hostname="comments-42"),
    case("!!python/unicode (PyYAML on Python 2 writes it)", minion("id: !!python/unicode 'py2-u-88'\n")),
    case("explicit key syntax", minion("? id\n: explicit-key-89\nmaster: salt\n")),
    case("quoted id keeps its spaces", minion("id: ' padded-90 '\n")),
    case("non-ASCII id", minion("id: w\u00e9b-\u00fc-91\n")),
    case("a very large integer id", minion("id: 123456789012345678901234567892\n")),
    case("negative integer id", minion("id: -93\n")),
    case("safe_dump of a long string: folded single quotes", minion(
        "id: 'a-very-long-id-94'\nmaster: 'salt-master-with-a-name-long-enough-to-fold\n  -over-two-lines'\n")),
    case("nested flow collections over lines before the id", minion(
        "grains: {roles: [web,\n    db], site: {name: x}}\nid: flow-before-95\n")),
    # --- whitespace, comments and line endings as libyaml reads them -------
    # (Salt's loader is PyYAML's CSafeLoader: libyaml's scanner, YAML 1.1.)
    case("tab after the colon", minion("id:\ttabbed-100\n")),
    case("tabs aligning keys and values, tab before a comment",
         minion("master:\t\tsalt\nid:\t\t\taligned-101\t# the box\n")),
    case("tabs after nested keys", minion(
        "grains:\n  roles:\t[web, db]\n  site:\tx\nschedule:\n  job:\n    minutes:\t60\n"
        "id:\tnested-102\n")),
    case("tab inside a plain id is kept", minion("id: plain\twith-tab-103\n")),
    case("tab inside quotes is kept", minion("id: 'q\ttab-104'\n")),
    case("tab after the colon, then quotes", minion('id:\t"dq-105"\n')),
    case("tab after the colon, then a block scalar", minion("id:\t>-\n  folded-106\n")),
    case("tab after the colon, then an octal int", minion("id:\t0107\n")),
    case("trailing tabs and a tab-only comment", minion("id: trail-108\t\t\n# note\twith tab\n")),
    case("tabs in a flow mapping", minion("{id:\tflow-109,\tmaster:\tsalt}\n")),
    case("flow mapping over lines indented with tabs", minion("{\n\tid: flow-110,\n\tmaster: salt\n}\n")),
    case("quoted id continued on a tab-indented line", minion('id: "multi\n\tline-111"\n')),
    case("block scalar keeps its tabs", {
        "etc/salt/minion": "motd: |\n  a:\tb\n  \tindented\nid: after-block-112\n",
    }),
    case("CR line endings alone", minion("master: salt\rid: cr-113\r")),
    case("CRLF with tabs and comments", minion("# header\r\nid:\tcrlf-114\t# c\r\n\r\n")),
    case("CRLF in a block scalar", minion("id: |-\r\n  crlf-block-115\r\n")),
    case("BOM then a tab after the colon", minion("\ufeffid:\tbom-116\r\n")),
    case("tab before a comment after a list item",
         minion("master:\n- salt1\t# primary\n- salt2\t\nid: list-117\n")),
    case("NEL and U+2028 end lines (libyaml's breaks)", minion("master: salt\u0085id: nel-129\u2028")),
    case("a spaces-then-tab line after a plain id", minion("id: blank-130\n  \t\nmaster: salt\n")),
    case("tab after an anchor", minion("name: &n\tanchor-131\nid: *n\n")),
    case("text with a bracket and a quote, then tabs", minion(
        "motd: a [draft, say 'hi\nid:\tbracket-132\t# c\n")),
    # What libyaml refuses: the file is skipped, the main file's id stands.
    case("a spaces-then-tab line after a quoted id is an error", {
        "etc/salt/minion": "id: main-133\n",
        "etc/salt/minion.d/tab.conf": "id: 'wrong'\n  \t\n",
    }),
    case("tab indentation is an error", {
        "etc/salt/minion": "id: main-118\n",
        "etc/salt/minion.d/tab.conf": "grains:\n\troles: web\nid: wrong\n",
    }),
    case("tab after a list dash is an error", {
        "etc/salt/minion": "id: main-119\n",
        "etc/salt/minion.d/tab.conf": "master:\n-\tsalt\nid: wrong\n",
    }),
    case("tab-only line is an error", {
        "etc/salt/minion": "id: main-120\n",
        "etc/salt/minion.d/tab.conf": "id: wrong\n\t\n",
    }),
    case("tab-indented comment is an error", {
        "etc/salt/minion": "id: main-121\n",
        "etc/salt/minion.d/tab.conf": "\t# comment\nid: wrong\n",
    }),
    case("tab indenting a block scalar is an error", {
        "etc/salt/minion": "id: main-122\n",
        "etc/salt/minion.d/tab.conf": "motd: |\n\ttext\nid: wrong\n",
    }),
    case("control character is an error", {
        "etc/salt/minion": "id: main-123\n",
        "etc/salt/minion.d/ctl.conf": "id: wrong\x0c\n",
    }),
    # --- merges Salt rejects (issue 24, item 6) -------------------------------
    case("the same key merged twice is a duplicate", {
        "etc/salt/minion": "id: main-124\n",
        "etc/salt/minion.d/merge.conf": "a: &a {k: 1}\nb: {<<: [*a, *a]}\nid: wrong\n",
    }),
    case("16 levels of doubling merges merged at the top", {
        "etc/salt/minion": "id: main-125\n",
        "etc/salt/minion.d/merge.conf": "defs:\n  l0: &l0 {a: 1}\n" + "".join(
            "  l%d: &l%d {<<: [*l%d, *l%d]}\n" % (k, k, k - 1, k - 1) for k in range(1, 17))
        + "<<: *l16\nid: wrong\n",
    }),
    case("a key overriding a twice-merged one", minion(
        "b: &b {a: 1}\nx: {<<: {<<: [*b, *b]}, a: 2}\nid: override-126\n")),
    case("a '=' key is a string", minion("=: value\nid: equals-127\n")),
    case("an include read twice (a diamond, no loop)", {
        "etc/salt/minion": "include: [a.conf, b.conf]\n",
        "etc/salt/a.conf": "include: common.conf\nid: from-a\n",
        "etc/salt/b.conf": "include: common.conf\nid: from-b\n",
        "etc/salt/common.conf": "id: common-128\n",
    }),
    # --- minion.d, default_include, include ---------------------------------
    case("minion.d overrides the main file", {
        "etc/salt/minion": "id: main\n",
        "etc/salt/minion.d/50-id.conf": "id: dropin-43\n",
    }),
    case("later minion.d file wins", {
        "etc/salt/minion.d/10-a.conf": "id: first\n",
        "etc/salt/minion.d/20-b.conf": "id: second-44\n",
        "etc/salt/minion.d/99-other.txt": "id: not-conf\n",
    }),
    case("broken minion.d file is skipped whole", {
        "etc/salt/minion": "id: main-45\n",
        "etc/salt/minion.d/00-broken.conf": "id: [unclosed\nmaster: x\n",
    }),
    case("broken later file does not lose the earlier id", {
        "etc/salt/minion.d/10-id.conf": "id: kept-46\n",
        "etc/salt/minion.d/20-bad.conf": "id: a\nid: b\n",
    }),
    case("minion.d file with only a document marker", {
        "etc/salt/minion": "id: main-96\n",
        "etc/salt/minion.d/empty.conf": "---\n",
    }),
    case("CRLF in minion.d", {
        "etc/salt/minion.d/crlf.conf": "master: salt\r\nid: crlf-97\r\n",
    }),
    case("minion.d file that is a list is skipped", {
        "etc/salt/minion": "id: main-47\n",
        "etc/salt/minion.d/10-list.conf": "- id: nope\n",
    }),
    case("default_include moved", {
        "etc/salt/minion": "default_include: conf.d/*.yaml\n",
        "etc/salt/minion.d/x.conf": "id: not-read\n",
        "etc/salt/conf.d/1.yaml": "id: default-include-48\n",
    }),
    case("include list, relative", {
        "etc/salt/minion": "id: main\ninclude:\n- extra/a.conf\n- extra/b.conf\n",
        "etc/salt/extra/a.conf": "id: a\n",
        "etc/salt/extra/b.conf": "id: include-b-49\n",
    }),
    case("include wins over minion.d", {
        "etc/salt/minion": "include: extra.conf\n",
        "etc/salt/minion.d/a.conf": "id: dropin\n",
        "etc/salt/extra.conf": "id: include-50\n",
    }),
    case("nested include relative to the including file", {
        "etc/salt/minion.d/a.conf": "include: ../nested/n.conf\n",
        "etc/salt/nested/n.conf": "include: deeper.conf\n",
        "etc/salt/nested/deeper.conf": "id: nested-51\n",
    }),
    case("include glob", {
        "etc/salt/minion": "include: 'inc/*.conf'\n",
        "etc/salt/inc/a.conf": "id: a\n",
        "etc/salt/inc/b.conf": "id: glob-52\n",
    }),
    case("config-management leftovers in minion.d", {
        "etc/salt/minion": "master: salt\n",
        "etc/salt/minion.d/_schedule.conf": "schedule:\n  __mine_interval: {function: mine.update, minutes: 60}\n",
        "etc/salt/minion.d/beacons.conf": "beacons:\n  diskusage:\n  - /: 90%\n",
        "etc/salt/minion.d/id.conf": "id: leftovers-53\n",
    }),
    # --- where the config directory comes from ------------------------------
    case("SALT_CONFIG_DIR", {
        "etc/salt/minion": "id: wrong\n",
        "etc/salt-alt/minion": "id: env-dir-54\n",
    }, env={"SALT_CONFIG_DIR": "/etc/salt-alt"}),
    case("SALT_MINION_CONFIG with the default directory", {
        "etc/salt/minion": "id: wrong\n",
        "etc/salt-file/minion.yml": "id: env-file-55\n",
    }, env={"SALT_MINION_CONFIG": "/etc/salt-file/minion.yml"}),
    case("-c DIR", {
        "etc/salt/minion": "id: wrong\n",
        "etc/salt-b/minion": "id: dash-c-56\n",
    }, minion_args=["-c", "/etc/salt-b"]),
    case("-cDIR", {
        "etc/salt-b/minion": "id: dash-c-57\n",
    }, minion_args=["-d", "-c/etc/salt-b"]),
    case("--config-dir=DIR", {
        "etc/salt-b/minion.d/id.conf": "id: config-dir-58\n",
    }, minion_args=["--config-dir=/etc/salt-b"]),
    case("--config-dir DIR beats SALT_CONFIG_DIR", {
        "etc/salt-b/minion": "id: config-dir-59\n",
        "etc/salt-alt/minion": "id: wrong\n",
    }, minion_args=["--config-dir", "/etc/salt-b"], env={"SALT_CONFIG_DIR": "/etc/salt-alt"}),
    # --- the cache --------------------------------------------------------
    case("cached id", {"etc/salt/minion": "master: salt\n", "etc/salt/minion_id": "cached-60\n"}),
    case("cached id, spaces and CRLF", {"etc/salt/minion_id": "  cached-61  \r\nsecond\n"}),
    case("cached id with BOM", {"etc/salt/minion_id": "\ufeffcached-62\n"}),
    case("cached localhost is refused", {"etc/salt/minion_id": "localhost\n"}, hostname="gen-63"),
    case("minion_id_caching: False", {
        "etc/salt/minion": "minion_id_caching: False\n",
        "etc/salt/minion_id": "cached\n",
    }, hostname="gen-64"),
    case("minion_id_caching: 0", {
        "etc/salt/minion": "minion_id_caching: 0\n",
        "etc/salt/minion_id": "cached\n",
    }, hostname="gen-65"),
    case("minion_id_caching: empty string", {
        "etc/salt/minion": "minion_id_caching: ''\n",
        "etc/salt/minion_id": "cached\n",
    }, hostname="gen-66"),
    case("minion_id_caching: no (in minion.d)", {
        "etc/salt/minion.d/c.conf": "minion_id_caching: no\n",
        "etc/salt/minion_id": "cached\n",
    }, hostname="gen-67"),
    case("minion_id_caching: ~", {
        "etc/salt/minion": "minion_id_caching: ~\n",
        "etc/salt/minion_id": "cached\n",
    }, hostname="gen-98"),
    case("minion_id_caching: 'false' (a string: truthy, the cache is read)", {
        "etc/salt/minion": "minion_id_caching: 'false'\n",
        "etc/salt/minion_id": "cached-99\n",
    }),
    case("cache under root_dir", {
        "etc/salt/minion": "root_dir: /etc/state\n",
        "etc/state/etc/salt/minion_id": "rooted-68\n",
    }),
    # --- the generated id ---------------------------------------------------
    case("generated: host name only", {}, hostname="plainhost-69"),
    case("generated: fqdn from /etc/hosts", {
        "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 web70.example.org web70\n",
    }, hostname="web70"),
    case("generated: fqdn is an alias", {
        "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 web71 web71.example.org\n",
    }, hostname="web71"),
    case("generated: getfqdn gives localhost, host name wins", {
        "etc/hosts": "127.0.0.1 localhost box72\n",
    }, hostname="box72"),
    case("generated: host name localhost, /etc/hostname", {
        "etc/hostname": "from-file-73\n",
    }, hostname="localhost"),
    case("generated: host name localhost, /etc/hosts names", {
        "etc/hostname": "",
        "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 hosts-file-74.example.org hosts-file-74\n",
    }, hostname="localhost"),
    case("generated: /etc/nodename", {
        "etc/hostname": "",
        "etc/nodename": "nodename-75\n",
    }, hostname="localhost.localdomain"),
    case("generated: localhost's canonical name", {
        "etc/hostname": "",
        "etc/hosts": "127.0.0.1 canon-76.example localhost\n",
    }, hostname="localhost"),
    case("generated: an address", {
        "etc/hostname": "",
        "etc/hosts": "127.0.0.1 localhost\n",
    }, hostname="localhost", addresses=["10.1.2.77"]),
    case("generated: ip6- names filtered", {
        "etc/hostname": "ip6-allnodes\nreal-78\n",
    }, hostname="ip6-localhost"),
    case("generated: minion_id_lowercase", minion("minion_id_lowercase: True\n"), hostname="MixedCase-79"),
    # minion_id_remove_domain came with Salt 3000: 2019.2 ignores it.
    case("generated: minion_id_remove_domain True", {
        "etc/salt/minion": "minion_id_remove_domain: True\n",
        "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 web80.example.org web80\n",
    }, hostname="web80", since=3000),
    case("generated: minion_id_remove_domain one domain", {
        "etc/salt/minion": "minion_id_remove_domain: Example.ORG\n",
        "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 web81.example.org web81\n",
    }, hostname="web81", since=3000),
    # --- append_domain ------------------------------------------------------
    case("append_domain on a configured id", minion("id: web82\nappend_domain: example.org\n")),
    case("append_domain: already there", minion("id: web83.example.org\nappend_domain: example.org\n")),
    case("append_domain: terminated FQDN", minion("id: web84.\nappend_domain: example.org\n")),
    case("append_domain on the cached id", {
        "etc/salt/minion": "append_domain: corp\n",
        "etc/salt/minion_id": "cached-85\n",
    }),
    case("append_domain on a generated id", minion("append_domain: corp\n"), hostname="gen-86"),
    case("append_domain not on a generated address", {
        "etc/salt/minion": "append_domain: corp\n",
        "etc/hostname": "",
    }, hostname="localhost", addresses=["10.1.2.87"]),
]
