#!/usr/bin/env bash
# The e2e checks against a real cluster (kind, CPU only). Not run in CI: it builds both images
# (the worker image is large) and needs docker, kind, helm and kubectl. From the repo root:
#   bash e2e/cluster.sh            # KEEP=1 keeps the cluster afterwards
set -euo pipefail

CLUSTER=${CLUSTER:-helios-e2e}
TAG=e2e
NAME=cpu-tiny  # metadata.name in examples/cpu-tiny.yaml

docker build -f worker/Dockerfile -t helios-worker:$TAG .
docker build -f operator/Dockerfile -t helios-operator:$TAG .
kind create cluster --name "$CLUSTER"
[ "${KEEP:-0}" = 1 ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT
kind load docker-image --name "$CLUSTER" helios-worker:$TAG helios-operator:$TAG

helm install helios charts/helios --namespace helios-system --create-namespace --wait \
  --set operator.image.repository=helios-operator --set operator.image.tag=$TAG \
  --set worker.image.repository=helios-worker --set worker.image.tag=$TAG
kubectl apply -f examples/cpu-tiny.yaml

# Evaluation pods, a selection, then a ready serving pod.
kubectl wait hd/$NAME --for=jsonpath='{.status.phase}'=Serving --timeout=20m
kubectl rollout status deployment/$NAME --timeout=10m
kubectl get hd $NAME -o wide
kubectl get heliosstatus $NAME -o jsonpath='{.status.decisionHistory}'; echo

kubectl port-forward service/$NAME 8000:8000 >/dev/null &
FORWARD=$!
trap 'kill $FORWARD' EXIT
[ "${KEEP:-0}" = 1 ] || trap 'kill $FORWARD; kind delete cluster --name "$CLUSTER"' EXIT
sleep 3
curl -fsS http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
  -d '{"prompt": "count from 41 : 41 42", "max_tokens": 4}'
echo
# Out-of-domain traffic: a breach storm; the decision history should gain add_layers or switch_model.
while IFS= read -r prompt; do
  curl -fsS -o /dev/null http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
    -d "$(python3 -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": 8}))' "$prompt")"
done < worker/helios_worker/assets/prompts/out_of_domain.txt
sleep 15
kubectl get heliosstatus $NAME -o jsonpath='{.status.decisionHistory[*].kind}' | tee /dev/stderr \
  | grep -Eq 'add_layers|switch_model' && echo "OK: the storm changed the setting"
