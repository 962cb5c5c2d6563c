# The project's entry points. Each target installs what it needs first (scripts/bootstrap).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Extra options for the local gateway, e.g. `make run LOCALGW_ARGS="--port 9000"` (python -m localgw --help).
LOCALGW_ARGS ?=
# The Chalice stage `make run` serves: dev (AUTH_MODE=none) or dev-jwt (tokens from `make token`).
RUN_STAGE ?= dev

.PHONY: test run lint bench soak token publish

## make test: install everything the suite needs (venv, redis-server, wscat), then run the whole suite.
test:
	scripts/bootstrap test
	$(PY) -m pytest $(PYTEST_ARGS)

## make run: serve the app locally at ws://localhost:8000/api with an embedded Redis (REDIS_URL overrides).
run:
	scripts/bootstrap run
	$(PY) -m localgw --chalice-stage $(RUN_STAGE) --page clients/browser/index.html $(LOCALGW_ARGS)

## make publish [url=URL] [message=JSON]: publish from a backend through POST /publish, signed with your
## AWS credentials (ws_broadcast_client.publish_from_backend, clients/python); url defaults to `make run`'s.
publish:
	@scripts/bootstrap python
	@# `make run` checks the signature's form only: without credentials of your own, any will do there.
	@$(if $(url),,AWS_ACCESS_KEY_ID=$${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=$${AWS_SECRET_ACCESS_KEY:-local} AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1}) \
	  $(PY) -m ws_broadcast_client.backend $(or $(url),http://localhost:8000/publish) '$(or $(message),{"type": 1, "data": "from a backend"})'

## make token [sub=NAME]: a one-hour token for `make run RUN_STAGE=dev-jwt`, and a wscat line that uses it.
token:
	@scripts/bootstrap python
	@$(PY) scripts/mint_token.py --stage dev-jwt --sub $(or $(sub),local-user)

## make bench: every benchmark beside its baseline (bench/README.md); figures in bench/results/latest.json.
bench:
	scripts/bootstrap test
	$(PY) -m bench $(BENCH_ARGS)

## make soak [connections=2000] [minutes=10]: N connections through localgw for that long (a fraction
## works: minutes=0.5), a steady mix of publishes, subscribes and reconnects; checks every delivery,
## memory and error lines at the end (bench/README.md); figures in bench/results/soak.json.
soak:
	scripts/bootstrap test
	$(PY) -m bench.soak --connections $(or $(connections),2000) --minutes $(or $(minutes),10)

## make lint: ruff, as CI runs it.
lint:
	scripts/bootstrap python
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# ---------------------------------------------------------------------------------------------------
# Deploy (infra/README.md). Two paths:
#   make deploy bucket=BUCKET stack=STACK   one CloudFormation stack: network + cache + the Chalice app
#   make network stack=STACK                the network + cache stack alone, then its outputs are
#                                           written into .chalice/config.json; then make chalice-deploy
# Every target below calls AWS with the environment make was started with: export AWS_PROFILE and
# AWS_DEFAULT_REGION once in the shell (a prefix on one command covers that command only).
STAGE ?= prod
OUT ?= out
BUILD ?= build
AWS ?= aws
CHALICE ?= $(VENV)/bin/chalice
CHECKOV_VENV ?= .venv-checkov
# Replication group id and ElastiCache user prefix: unique per account and region, lowercase.
cache ?= $(shell echo '$(stack)' | tr '[:upper:]' '[:lower:]')
# The queue app.py's fanout_worker reads on the chalice deploy path (`chalice deploy` finds it by name).
FANOUT_QUEUE := ws-broadcast-fanout
# Most concurrent fanout_worker invocations on the chalice deploy path (the template's FanoutWorkerMaximumConcurrency).
worker_concurrency ?= 10
# The SSM SecureString with the HS256 secret: the stack's own, as the template (AuthJwtSecretParameter
# left empty) and write_chalice_config.py derive it, so that two stacks never share one.
secret ?= /ws-broadcast/$(stack)/jwt-secret
MERGE_TEMPLATE := $(BUILD)/merge-template.json
STACK_STEP := AWS=$(AWS) CHALICE=$(CHALICE) $(PY) scripts/aws_stack.py

.PHONY: package checkov bucket secret deploy endpoint destroy network chalice-config chalice-deploy logs

## make package: one template ($(OUT)/sam.json) = chalice's app + infra/network.yaml + infra/app.yaml +
## infra/monitoring.yaml (dashboard, alarms), and the code ($(OUT)/deployment.zip) with the bytecode of the runtime's Python.
package:
	scripts/bootstrap python
	$(PY) scripts/lambda_runtime.py
	$(PY) scripts/compose_template.py infra/network.yaml infra/app.yaml infra/monitoring.yaml -o $(MERGE_TEMPLATE)
	@# chalice wants a region even to package; the template does not depend on it (it uses AWS::Region).
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(CHALICE) package --stage $(STAGE) --merge-template $(MERGE_TEMPLATE) $(OUT)
	$(PY) scripts/compose_template.py --verify $(OUT)/sam.json
	$(PY) scripts/ship_bytecode.py $(OUT)/deployment.zip --template $(OUT)/sam.json

## make checkov: checkov on the merged template of the last `make package` (skips justified in infra/README.md).
## checkov pins versions that conflict with the test tools, so it lives in a virtual environment of its own.
checkov:
	@test -f $(OUT)/sam.json || { echo "make checkov: no $(OUT)/sam.json: run make package first" >&2; exit 2; }
	@test -x $(CHECKOV_VENV)/bin/checkov || { python3 -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt; }
	$(CHECKOV_VENV)/bin/checkov --config-file infra/checkov.yaml -f $(OUT)/sam.json

## make bucket bucket=BUCKET: create the S3 bucket for the code, in the region the stack will use.
bucket:
	@test -n "$(bucket)" || { echo "make bucket: bucket is missing: make bucket bucket=<new globally unique name>" >&2; exit 2; }
	scripts/bootstrap python
	$(STACK_STEP) bucket $(bucket)

## make secret stack=STACK [secret=NAME]: a random HS256 secret in the SSM SecureString NAME, by default
## /ws-broadcast/STACK/jwt-secret, the one the stack STACK reads (fails if it exists).
secret:
	@test -n "$(stack)$(filter command line,$(origin secret))" || { echo "make secret: stack is missing: make secret stack=<the stack that will read it> (or secret=/path/name)" >&2; exit 2; }
	scripts/bootstrap python
	$(STACK_STEP) secret $(secret)

## make deploy bucket=BUCKET stack=STACK [cache=NAME] [params="NatGateways=2 ..."]: upload the code to
## BUCKET (under STACK/), deploy the one stack STACK (params: more template parameters, infra/README.md).
deploy:
	@test -n "$(bucket)" || { echo "make deploy: bucket is missing: make deploy bucket=<S3 bucket for the code> stack=<stack name>" >&2; exit 2; }
	@test -n "$(stack)" || { echo "make deploy: stack is missing: make deploy bucket=<S3 bucket for the code> stack=<stack name>" >&2; exit 2; }
	$(MAKE) --no-print-directory package
	$(STACK_STEP) check-bucket $(bucket)
	$(AWS) cloudformation package --template-file $(OUT)/sam.json --s3-bucket $(bucket) --s3-prefix $(stack) --output-template-file $(OUT)/packaged.yaml
	$(AWS) cloudformation deploy --template-file $(OUT)/packaged.yaml --stack-name $(stack) --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --parameter-overrides CacheName=$(cache) $(params) --no-fail-on-empty-changeset
	@echo "next: make endpoint stack=$(stack)"

## make endpoint stack=STACK: the wss:// URL and POST /publish's (stack outputs WebsocketConnectEndpointURL
## and PublishURL, or chalice's record for a network stack), with a first wscat line and make publish line.
endpoint:
	@test -n "$(stack)" || { echo "make endpoint: stack is missing: make endpoint stack=<stack name>" >&2; exit 2; }
	@scripts/bootstrap python
	@$(STACK_STEP) endpoint $(stack) --stage $(STAGE)

## make logs stack=STACK [follow=1] [since=1h]: `aws logs tail` (AWS CLI v2) of every deployed function's log
## group, side by side, each line prefixed with its function; follow=1 follows them until Ctrl-C.
logs:
	@test -n "$(stack)" || { echo "make logs: stack is missing: make logs stack=<stack name> [follow=1] [since=1h]" >&2; exit 2; }
	@scripts/bootstrap python
	@$(STACK_STEP) logs $(stack) --stage $(STAGE) --since $(or $(since),10m) $(if $(follow),--follow)

## make destroy stack=STACK [bucket=BUCKET] [secret=NAME]: delete what the deploy made, in order, and wait:
## for a network stack, first the chalice app, its log groups and the functions' network interfaces.
## bucket= also removes the code under s3://BUCKET/STACK/; secret= (named explicitly) the SSM parameter.
destroy:
	@test -n "$(stack)" || { echo "make destroy: stack is missing: make destroy stack=<stack name>" >&2; exit 2; }
	scripts/bootstrap python
	$(STACK_STEP) destroy $(stack) --stage $(STAGE) $(if $(bucket),--bucket $(bucket)) $(if $(filter command line,$(origin secret)),--secret $(secret))

## make network stack=STACK [cache=NAME] [params=...]: deploy infra/network.yaml alone, then write its outputs into
## .chalice/config.json (stage $(STAGE)); then: make chalice-deploy
network:
	@test -n "$(stack)" || { echo "make network: stack is missing: make network stack=<stack name for the network and cache>" >&2; exit 2; }
	$(AWS) cloudformation deploy --template-file infra/network.yaml --stack-name $(stack) --parameter-overrides CacheName=$(cache) FanoutQueueName=$(FANOUT_QUEUE) $(params) --no-fail-on-empty-changeset
	$(MAKE) --no-print-directory chalice-config stack=$(stack)
	@echo "next: make chalice-deploy"

## make chalice-config stack=STACK: (re)write .chalice/config.json stage $(STAGE) from the stack's outputs.
chalice-config:
	@test -n "$(stack)" || { echo "make chalice-config: stack is missing: make chalice-config stack=<network stack name>" >&2; exit 2; }
	scripts/bootstrap python
	@mkdir -p $(BUILD)
	$(AWS) cloudformation describe-stacks --stack-name $(stack) --output json > $(BUILD)/stack-$(stack).json
	$(PY) scripts/write_chalice_config.py --describe-stacks $(BUILD)/stack-$(stack).json --stage $(STAGE)

## make chalice-deploy [worker_concurrency=N]: `chalice deploy --stage $(STAGE)` with the same AWS_PROFILE /
## AWS_DEFAULT_REGION; then api_handler gets the WebSocket API's id (known only now) and the policy is
## narrowed to it, by a second deploy; the worker's event source mapping gets partial batch
## failures and its maximum concurrency.
chalice-deploy:
	scripts/bootstrap python
	$(PY) scripts/lambda_runtime.py
	$(STACK_STEP) chalice-deploy --stage $(STAGE) --worker-max-concurrency $(worker_concurrency)
