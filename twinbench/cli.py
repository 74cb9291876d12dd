"""The ``twinbench`` command.

Subcommands: ``bench`` (benchmarks with figures and ratios), ``record`` (live tags to a
dataset file), ``plant`` (the simulated plant), ``trust`` (an OPC-UA server's certificate into
the trust list), ``users`` (the accounts that sign in to twinbench apps) and ``demo`` (the
main job: the plant and the dashboard served by Voila; ``demo --kernel`` walks through the
kernel on recorded-like data).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: ``twinbench bench AREA``: the modules that make up each area.
BENCH_AREAS = {
    "kernel": ["integrate", "estimate", "detect", "rul"],
    "integrate": ["integrate"],
    "estimate": ["estimate"],
    "detect": ["detect"],
    "rul": ["rul"],
    "io": ["io_mqtt", "io_opcua"],
    "mqtt": ["io_mqtt"],
    "opcua": ["io_opcua"],
    "twin": ["twin", "twin_whatif"],
    "ui": ["ui"],
}


def _format_table(figs: list[dict]) -> str:
    from twinbench.bench._common import met

    rows = [("figure", "value", "baseline", "ratio", "target", "")]
    for f in figs:
        value = f["value"]
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        vtxt = "n/a" if missing else f"{value:.4g} {f['unit']}"
        ratio = "" if f["ratio"] is None else f"{f['ratio']:.3g}x"
        target = "" if f["target"] is None else f">= {f['target']:g}x"
        ok = {True: "ok", False: "MISSED", None: ""}[met(f)]
        base = f["baseline"] + (f" ({f['note']})" if f.get("note") else "")
        rows.append((f["name"], vtxt, base, ratio, target, ok))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    from twinbench.bench._common import met

    unknown = [a for a in args.areas if a not in BENCH_AREAS]
    if unknown:
        print(f"twinbench bench: unknown area(s) {unknown}; choose from "
              f"{', '.join(sorted(BENCH_AREAS))}", file=sys.stderr)
        return 2
    modules = []
    for area in args.areas or ["kernel"]:
        modules += [m for m in BENCH_AREAS[area] if m not in modules]
    figs: list[dict] = []
    for name in modules:
        mod = importlib.import_module(f"twinbench.bench.{name}")
        if not args.json:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        figs += mod.run(quick=args.quick)
    if args.json:
        # strict JSON: a figure that could not be measured is null, never NaN
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in f.items()} for f in figs]
        print(json.dumps(clean, indent=None if args.compact else 1, allow_nan=False))
    else:
        print(_format_table(figs))
    if args.check and any(met(f) is False for f in figs):
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from twinbench.demo import kernel_demo, serve_demo

    if args.kernel:
        return kernel_demo(quick=args.quick)
    try:
        return serve_demo(port=args.port, opcua_port=args.opcua_port, writable=args.writable,
                          audit=args.audit, mqtt=args.mqtt, speedup=args.speedup,
                          faults=args.fault or (), verbose=args.verbose,
                          sign_in=not args.no_sign_in, read_only=args.read_only,
                          users=args.users, host=args.host)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"twinbench demo: {exc}", file=sys.stderr)
        return 2


def _record(args: argparse.Namespace) -> int:
    import urllib.parse

    scheme = urllib.parse.urlsplit(args.url).scheme.lower()
    if scheme not in ("mqtt", "mqtts", "opc.tcp"):
        print(f"twinbench record: URL: expected opc.tcp://, mqtt:// or mqtts://, got "
              f"{args.url!r}", file=sys.stderr)
        return 2
    from twinbench.io import connect
    from twinbench.io.record import record
    from twinbench.io.tags import tag_map

    kind = "opc.tcp" if scheme == "opc.tcp" else "mqtt"
    try:
        entries: dict = {}
        if args.tags:
            tm = tag_map(args.tags, scheme=kind)
            for name in tm.names:
                entry = {"address": str(tm[name])}
                if name in tm.units:
                    entry["units"] = tm.units[name]
                if name in tm.long_names:
                    entry["long_name"] = tm.long_names[name]
                entries[name] = entry
        for item in args.tag or []:
            name, sep, address = item.partition("=")
            if not sep or not name or not address:
                raise ValueError(f"--tag: expected NAME=ADDRESS, got {item!r}")
            entries[name] = {"address": address}
        if not entries:
            raise ValueError("--tag/--tags: expected at least one tag")
        options: dict = {}
        if args.max_clock_skew is not None:
            options["max_clock_skew"] = args.max_clock_skew
        if kind == "mqtt":
            if args.time_field:
                options.update(time_field=args.time_field, time_format=args.time_format)
        else:
            if args.time_field:
                raise ValueError("--time-field: OPC-UA samples carry their SourceTimestamp")
            options.update(security=args.security, publishing_interval=args.publishing_interval)
        source = connect(args.url, tag_map(entries, scheme=kind), **options)
        ds = record(source, args.duration, args.out, max_samples=args.max_samples)
    except (ValueError, TypeError, KeyError, LookupError, OSError, ImportError) as exc:
        print(f"twinbench record: {exc}", file=sys.stderr)
        return 2
    status = json.loads(ds.attrs.get("twinbench_status", "{}"))
    decode = status.get("decode", {})
    problems = {k: v for part in ("rejects", "flags") for k, v in decode.get(part, {}).items()
                if v}
    print(f"recorded {len(source.tags)} tags, {ds.attrs['twinbench_samples']} samples at "
          f"{ds.sizes['time']} times to {args.out}; received {decode.get('messages', 0)}, "
          f"problems {problems or 'none'}")
    return 0


def _plant(args: argparse.Namespace) -> int:
    import os
    import secrets

    from twinbench.plant import run_plant

    users = None
    announce: list[str] = []
    password = os.environ.get("TWINBENCH_PLANT_PASSWORD")
    if args.secure:
        if args.classroom is not None:
            print("twinbench plant: --secure serves one plant; leave out --classroom",
                  file=sys.stderr)
            return 2
        if args.security != "none":
            print("twinbench plant: --secure serves SignAndEncrypt only; leave out --security",
                  file=sys.stderr)
            return 2
        args.user = args.user or "operator"
        if password:
            announce.append(f"user {args.user}; password from TWINBENCH_PLANT_PASSWORD")
        else:
            password = secrets.token_urlsafe(18)
            # Printed here once, on stdout only: never logged, never stored by the plant.
            announce.append(f"user {args.user}; generated password (shown only now): "
                            f"{password}")
    if args.user:
        if not password:
            print("twinbench plant: --user needs the password in TWINBENCH_PLANT_PASSWORD",
                  file=sys.stderr)
            return 2
        users = {args.user: password}
    options = {"secure": True} if args.secure else {}
    try:
        return run_plant(classroom=args.classroom, host=args.host, opcua_port=args.opcua_port,
                         mqtt=args.mqtt,
                         wind=args.wind, faults=args.fault or (), seed=args.seed,
                         speedup=args.speedup, rate=args.rate, bench_tags=args.bench_tags,
                         bench_rate=args.bench_rate, security=args.security, users=users,
                         state_dir=args.state_dir, mqtt_qos=args.mqtt_qos, announce=announce,
                         **options)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"twinbench plant: {exc}", file=sys.stderr)
        return 2


def _trust(args: argparse.Namespace) -> int:
    import asyncio

    from twinbench.io.opcua import certificate_info, fetch_server_certificate, trust_certificate

    url = args.source if args.source.startswith("opc.tcp://") else None
    try:
        info = (asyncio.run(fetch_server_certificate(url, timeout=args.timeout)) if url
                else certificate_info(args.source))
    except (ValueError, TypeError, OSError) as exc:  # ConnectionError and TimeoutError too
        print(f"twinbench trust: {exc}", file=sys.stderr)
        return 2
    print(f"subject      {info.subject}")
    print(f"SHA-256      {info.fingerprint}")
    print(f"valid until  {info.not_valid_after}")
    if not args.yes:
        print("not stored: compare the SHA-256 fingerprint with the one the server's "
              "administrator gives you, then run again with --yes")
        return 0
    # What was printed is what is stored (not a second fetch that could differ).
    stored = trust_certificate(info.der, trust_dir=args.trust_dir, cert_dir=args.cert_dir,
                               server=url)
    print(f"trusted: stored in {stored.path}")
    return 0


def _users(args: argparse.Namespace) -> int:
    import getpass
    import os

    from twinbench.auth import generate_password, users_file

    users = users_file(args.file)
    try:
        if args.action == "list":
            entries = users.entries()
            if not entries:
                print(f"no users in {users.path}")
            for name in sorted(entries):
                print(f"{name}\t{entries[name]['role']}")
            return 0
        if args.action == "remove":
            users.remove(args.name)
            print(f"removed {args.name} from {users.path}")
            return 0
        # add: the password from the environment, a prompt, or generated; never an argument
        # (the command line is visible to every account on the machine)
        generated = False
        password = os.environ.get("TWINBENCH_NEW_PASSWORD")
        if args.generate:
            if password:
                raise ValueError("--generate: leave out TWINBENCH_NEW_PASSWORD, or --generate")
            password, generated = generate_password(), True
        elif not password:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                raise ValueError("password: the two entries differ")
        existed = args.name in users.entries()
        users.add(args.name, password, args.role)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"twinbench users: {message}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("twinbench users: no password given", file=sys.stderr)
        return 2
    print(f"{'replaced' if existed else 'added'} {args.name} ({args.role}) in {users.path}")
    if generated:
        # Shown here once, on stdout only: the file holds its hash, nothing else has it.
        print(f"generated password (shown only now): {password}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    b = sub.add_parser("bench", help="run benchmarks and print figures with ratios to baselines",
                       description="Run benchmarks. Each figure is measured side by side with its "
                                   "baseline in the same run; ratio > 1 means faster.")
    b.add_argument("areas", nargs="*", metavar="AREA",
                   help=f"what to measure: {', '.join(sorted(BENCH_AREAS))} (default: kernel)")
    b.add_argument("--json", action="store_true", help="print one JSON list of figures")
    b.add_argument("--compact", action="store_true", help="with --json: on one line")
    b.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not figures)")
    b.add_argument("--check", action="store_true", help="exit 1 if a figure misses its target")
    b.set_defaults(func=_bench)

    d = sub.add_parser("demo", help="run the plant and the dashboard app (Voila)",
                       description="Start the simulated plant and serve the dashboard with Voila "
                                   "on 127.0.0.1; prints the URL, then 'twinbench demo ready'; "
                                   "Ctrl-C or SIGTERM stops both. --kernel runs the kernel "
                                   "demonstration instead.")
    d.add_argument("--kernel", action="store_true",
                   help="the kernel demonstration (a simulated fault day, no servers)")
    d.add_argument("--quick", action="store_true", help="with --kernel: a shorter run")
    d.add_argument("--port", type=int, default=None,
                   help="Voila's port (default 8866 if free; 0 picks a free one)")
    d.add_argument("--opcua-port", type=int, default=None,
                   help="the plant's OPC-UA port (default 4840 if free; 0 picks a free one)")
    d.add_argument("--writable", default="speed_setpoint", metavar="TAGS",
                   help="comma-separated tags the dashboard may write, '' for read-only "
                        "(default speed_setpoint)")
    d.add_argument("--audit", default=None, metavar="FILE",
                   help="audit log of writes (default ~/.local/share/twinbench/demo/audit.jsonl)")
    d.add_argument("--mqtt", default="auto", metavar="URL|auto|none",
                   help="the plant's MQTT: 'auto' starts mosquitto if installed (default)")
    d.add_argument("--speedup", type=float, default=1.0, help="simulated s per wall s")
    d.add_argument("--fault", action="append", metavar="SPEC", help="a plant fault (repeatable)")
    d.add_argument("--verbose", action="store_true", help="show Voila's log")
    d.add_argument("--host", default="127.0.0.1",
                   help="address Voila listens on (default 127.0.0.1: this machine only)")
    d.add_argument("--users", default=None, metavar="FILE",
                   help="sign in with the accounts of this users file (twinbench users add); "
                        "default: a one-time operator account, its password printed once")
    d.add_argument("--no-sign-in", action="store_true",
                   help="no sign-in (refused for a writable app on a non-loopback --host)")
    d.add_argument("--read-only", action="store_true",
                   help="a public showcase: no write path at all, no sign-in unless --users")
    d.set_defaults(func=_demo)

    r = sub.add_parser("record", help="record live tags into a .nc or .zarr dataset",
                       description="Record tags of a live source for a while into an xarray "
                                   "dataset file (NetCDF3 .nc or Zarr .zarr).")
    r.add_argument("url", metavar="URL",
                   help="opc.tcp://host:port/path, mqtt://host:port or mqtts://host:port "
                        "(credentials from TWINBENCH_OPCUA_*/TWINBENCH_MQTT_* variables)")
    r.add_argument("--tag", action="append", metavar="NAME=ADDRESS",
                   help="a tag, e.g. temp=plant/pump1/telemetry#temperature or "
                        "speed=ns=2;s=Pump1.speed (repeatable)")
    r.add_argument("--tags", metavar="FILE", help="a YAML/JSON tag map file")
    r.add_argument("--duration", type=float, required=True, metavar="SECONDS",
                   help="how long to record")
    r.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="stop early after N samples")
    r.add_argument("--time-field", default=None,
                   help="JSON field holding the sample time (default: receive time)")
    r.add_argument("--time-format", default="epoch_ms", help="format of --time-field")
    r.add_argument("--security", default="none", choices=("none", "sign", "encrypt"),
                   help="OPC-UA: Basic256Sha256 Sign or SignAndEncrypt (default none)")
    r.add_argument("--publishing-interval", type=float, default=100.0, metavar="MS",
                   help="OPC-UA: publishing and sampling interval in ms (default 100)")
    r.add_argument("--max-clock-skew", type=float, default=None, metavar="SECONDS",
                   help="sample times further ahead of the receive time are replaced by it and "
                        "flagged (default: the source's, 3600 OPC-UA, 300 MQTT); a plant run "
                        "with --speedup runs its clock ahead: raise this to keep its times")
    r.add_argument("--out", required=True, metavar="FILE.nc|FILE.zarr",
                   help="output file: NetCDF3 (.nc) or Zarr (.zarr)")
    r.set_defaults(func=_record)

    pl = sub.add_parser("plant", help="run the simulated plant (OPC-UA server + MQTT)",
                        description="Run the pump (and a wind turbine) in real time over OPC-UA "
                                    "and MQTT, with fault injection. Prints its endpoints, then "
                                    "'twinbench plant ready'; Ctrl-C or SIGTERM stops it.")
    pl.add_argument("--host", default="127.0.0.1", help="OPC-UA interface (default 127.0.0.1)")
    pl.add_argument("--opcua-port", type=int, default=4840, help="0 picks a free port")
    pl.add_argument("--mqtt", default="auto", metavar="URL|auto|none",
                    help="broker URL, 'auto' (start mosquitto/amqtt) or 'none' (default auto)")
    pl.add_argument("--wind", action="store_true", help="also run the wind turbine")
    pl.add_argument("--fault", action="append", metavar="SPEC",
                    help="bearing_wear[:factor], drift:TAG:RATE_PER_H, stuck:TAG, dropout:TAG, "
                         "comm_loss[:SECONDS] (repeatable)")
    pl.add_argument("--seed", type=int, default=0, help="sensor-noise seed")
    pl.add_argument("--speedup", type=float, default=1.0, help="simulated s per wall s")
    pl.add_argument("--rate", type=float, default=10.0, help="ticks per second")
    pl.add_argument("--bench-tags", type=int, default=0, metavar="N",
                    help="N benchmark variables ns=2;s=Bench.TagNNNN")
    pl.add_argument("--bench-rate", type=float, default=10.0, help="their updates per second")
    pl.add_argument("--security", default="none", metavar="none,sign,encrypt",
                    help="OPC-UA security policies offered (default none)")
    pl.add_argument("--user", default=None, metavar="NAME",
                    help="require this user; password from TWINBENCH_PLANT_PASSWORD")
    pl.add_argument("--secure", action="store_true",
                    help="authentication on both protocols: OPC-UA SignAndEncrypt only with a "
                         "user (--user, default 'operator'), MQTT over TLS (mqtts://, CA and "
                         "server certificate made in --state-dir) with a password file; the "
                         "password from TWINBENCH_PLANT_PASSWORD, else generated and printed "
                         "once")
    pl.add_argument("--mqtt-qos", type=int, default=0, choices=(0, 1, 2),
                    help="QoS of the telemetry (default 0; commands and acks use 1)")
    pl.add_argument("--state-dir", default=None, metavar="DIR",
                    help="where the server certificates (and with --secure the MQTT CA) are "
                         "kept (default ~/.local/share/twinbench/plant)")
    pl.add_argument("--classroom", type=int, default=None, metavar="N",
                    help="serve N independent plants (1..64), one per student, on consecutive "
                         "OPC-UA ports from --opcua-port; seeds SEED+i, MQTT topics "
                         "plant/studentNN/... (one process: 30 plants at 10 Hz took ~13%% of a "
                         "core on 2 cores, but start-up takes a few seconds per plant)")
    pl.set_defaults(func=_plant)

    t = sub.add_parser("trust", help="show an OPC-UA server's certificate; --yes trusts it",
                       description="Print the subject and SHA-256 fingerprint of the certificate "
                                   "an OPC-UA server presents (or of a certificate file); with "
                                   "--yes also store it in the trust list that "
                                   "opcua_source(security='sign'|'encrypt') checks.")
    t.add_argument("source", metavar="URL|FILE",
                   help="opc.tcp://host:port[/path], or a certificate file (DER or PEM)")
    t.add_argument("--yes", action="store_true",
                   help="store it (after you compared the fingerprint)")
    t.add_argument("--trust-dir", default=None, metavar="DIR",
                   help="the trust list (default CERT_DIR/trusted)")
    t.add_argument("--cert-dir", default=None, metavar="DIR",
                   help="the client's certificate folder (default ~/.local/share/twinbench/opcua)")
    t.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="for fetching from a server (default 5)")
    t.set_defaults(func=_trust)

    u = sub.add_parser("users", help="the accounts that may sign in to twinbench apps",
                       description="Add, list or remove the accounts of a users file (the "
                                   "sign-in of `twinbench demo` and VoilaServer(auth='users')). "
                                   "The file holds salted scrypt hashes, never a password; "
                                   "default $TWINBENCH_USERS, else "
                                   "~/.config/twinbench/users.json.")
    usub = u.add_subparsers(dest="action", required=True, metavar="add|list|remove")
    ua = usub.add_parser("add", help="add an account, or replace its password and role",
                         description="The password comes from TWINBENCH_NEW_PASSWORD, else "
                                     "is asked twice, or with --generate is generated and "
                                     "printed once.")
    ua.add_argument("name", metavar="NAME", help="1 to 64 of A-Z a-z 0-9 _ . @ -")
    ua.add_argument("--role", required=True, choices=("viewer", "operator", "engineer"),
                    help="viewer: sees everything, changes nothing; operator: may also write "
                         "allow-listed tags and run scenarios; engineer: may also change "
                         "limits, rules and the tag map")
    ua.add_argument("--generate", action="store_true",
                    help="generate the password and print it once")
    ul = usub.add_parser("list", help="the accounts and their roles")
    ur = usub.add_parser("remove", help="remove an account")
    ur.add_argument("name", metavar="NAME")
    for parser_ in (ua, ul, ur):
        parser_.add_argument("--file", default=None, metavar="FILE",
                             help="the users file (default $TWINBENCH_USERS, else "
                                  "~/.config/twinbench/users.json)")
    u.set_defaults(func=_users)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from twinbench import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
