#!/usr/bin/env python3
# Checks a Kubernetes manifest offline, without a cluster:
#
#   python3 -m venv /tmp/k8s && /tmp/k8s/bin/pip install kubernetes pyyaml
#   /tmp/k8s/bin/python scripts/slurm/k8s-validate.py scripts/slurm/k8s-indexed-job.yaml
#
# Walks each document against the kubernetes client's model classes (generated from the
# API's OpenAPI schema): every key must be a field of its type; checks the types of leaves.
import sys, re, yaml, kubernetes.client as k
errors = []
def check(obj, typ, path):
    if typ.lower().startswith('list['):
        inner = typ[5:-1]
        if not isinstance(obj, list): errors.append(f"{path}: expected a list"); return
        for i, x in enumerate(obj): check(x, inner, f"{path}[{i}]")
        return
    if typ.lower().startswith('dict(') or typ.startswith('Dict['):
        inner = typ[typ.index(',')+1:-1].strip()
        for kk, v in obj.items(): check(v, inner, f"{path}.{kk}")
        return
    prim = {'str': str, 'int': int, 'bool': bool, 'float': (int, float), 'object': object, 'datetime': str}
    if typ in prim:
        if not isinstance(obj, prim[typ]): errors.append(f"{path}: {obj!r} is not {typ}")
        return
    cls = getattr(k, typ)
    if not isinstance(obj, dict): errors.append(f"{path}: expected an object {typ}"); return
    rev = {v: a for a, v in cls.attribute_map.items()}
    for key, val in obj.items():
        if key not in rev: errors.append(f"{path}.{key}: no such field in {typ}"); continue
        check(val, cls.openapi_types[rev[key]], f"{path}.{key}")
for d in yaml.safe_load_all(open(sys.argv[1])):
    check(d, 'V1' + d['kind'], d['kind'])
print("\n".join(errors) or "schema ok"); sys.exit(1 if errors else 0)
