"""Enrolls fake-hardware nodes in a test Ironic and reports them as JSON.

Usage: ironic_ctl.py URL [--cacert FILE] wait SECONDS
       ironic_ctl.py URL [--cacert FILE] enroll COUNT
       ironic_ctl.py URL [--cacert FILE] nodes

`wait` returns once `GET /v1/` answers 200 (Ironic is serving), or fails
after SECONDS.

Nodes are created with the fake-hardware driver and moved to `available`
(power off, manage, provide), the state nova deploys to. Run with the nova
test-bed venv's python, which has openstacksdk.
"""
import argparse
import json
import ssl
import time
import urllib.request
import uuid

import openstack


def connect(url, cacert):
    kwargs = {"auth_type": "none", "baremetal_endpoint_override": url, "baremetal_api_version": "1"}
    if cacert:
        kwargs["cacert"] = cacert
    return openstack.connection.Connection(**kwargs)


def enroll(conn, count):
    created = []
    for i in range(count):
        node = conn.baremetal.create_node(
            driver="fake-hardware",
            name=f"leakmon-node-{i}-{uuid.uuid4().hex[:6]}",
            resource_class="baremetal",
            properties={"cpus": 2, "memory_mb": 1024, "local_gb": 10, "cpu_arch": "x86_64"},
        )
        conn.baremetal.set_node_power_state(node, "power off", wait=True, timeout=60)
        conn.baremetal.set_node_provision_state(node, "manage", wait=True, timeout=60)
        conn.baremetal.set_node_provision_state(node, "provide", wait=True, timeout=60)
        created.append(node.id)
    return created


def wait(url, cacert, seconds):
    context = ssl.create_default_context(cafile=cacert) if cacert else None
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/", timeout=5, context=context) as answer:
                if answer.status == 200:
                    return
        except OSError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"Ironic at {url} not serving after {seconds} s: {e}")
        time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--cacert")
    parser.add_argument("command", choices=["wait", "enroll", "nodes"])
    parser.add_argument("count", type=int, nargs="?", default=1, help="nodes, or seconds to wait")
    args = parser.parse_args()
    if args.command == "wait":
        wait(args.url, args.cacert, args.count)
        print(json.dumps({"serving": args.url}))
        return
    conn = connect(args.url, args.cacert)
    if args.command == "enroll":
        print(json.dumps({"nodes": enroll(conn, args.count)}))
    else:
        nodes = [{"uuid": n.id, "provision_state": n.provision_state, "power_state": n.power_state}
                 for n in conn.baremetal.nodes(fields=["uuid", "provision_state", "power_state"])]
        print(json.dumps({"nodes": nodes}))
    conn.close()


if __name__ == "__main__":
    main()
