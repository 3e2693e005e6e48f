{{/* Names, labels and the operator's RBAC rules, shared by every template. */}}

{{- define "bigmodel-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-bigmodel-operator, or the release name alone when it already says bigmodel-operator. */}}
{{- define "bigmodel-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Labels of the operator's pods, and the selectors that find them (Deployment, metrics Service, NetworkPolicy).
They must never include app.kubernetes.io/managed-by=bigmodel-operator: that label marks the Ray pods the operator
creates, which the NetworkPolicy locks down.
*/}}
{{- define "bigmodel-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bigmodel-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The selector labels as key=value,key=value: how the operator is told its own pods' labels. */}}
{{- define "bigmodel-operator.selectorLabelPairs" -}}
{{- $pairs := list }}
{{- range $key, $value := include "bigmodel-operator.selectorLabels" . | fromYaml }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "bigmodel-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bigmodel-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* More than one replica runs Kopf peering; one runs standalone. */}}
{{- define "bigmodel-operator.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/*
The operator's API permissions, in one place for both modes (a ClusterRole when it watches every namespace, a Role
per watched namespace otherwise). Called with (dict "root" $ "peerings" "<kopf.dev peering resource>").

These rules are checked by tests against the API calls the operator was recorded making: change them together with
the operator's code, never one without the other.
*/}}
{{- define "bigmodel-operator.rules" -}}
{{- /* No get of the jobs and services: the operator reads them from what its watch (Kopf's) delivered. */}}
- apiGroups: [bigmodel.dev]
  resources: [bigmodeljobs]
  verbs: [list, watch, patch, delete]
- apiGroups: [bigmodel.dev]
  resources: [bigmodelservices]
  verbs: [list, watch, patch]
- apiGroups: [bigmodel.dev]
  resources: [bigmodeljobs/status, bigmodelservices/status]
  verbs: [patch]
{{- /* list and watch: the informers of the pods and Services the operator made, selected by its label; get: a
create that finds the name taken reads who holds it. */}}
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
{{- /* patch: an upgrade moves a serving Service's selector to the new cluster. */}}
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- /* Each Ray cluster's token Secret and NetworkPolicy: made with the cluster, made again in place of any object
holding their names (delete, create), deleted with it. Never read: a cluster's token is derived from the operator's
key (its own Secret, readable by name only: token-key-role.yaml), so no Secret of the cluster is ever readable. */}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, delete]
{{- if .root.Values.gangScheduling.volcano }}
{{- /* Each Volcano job cluster's PodGroup: made before its pods, deleted with them; get: a create that finds the
name taken reads who holds it. Kueue needs no rule: a job's pods join their Kueue pod group by labels alone. */}}
- apiGroups: [scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [create, get, delete]
{{- end }}
{{- if include "bigmodel-operator.peering" .root }}
{{- /* Kopf lists and watches the peering objects and patches its keep-alive into the status of the one it is
told; it never reads one alone, nor creates it (the chart does: kopf-peering.yaml). */}}
- apiGroups: [kopf.dev]
  resources: [{{ .peerings }}]
  verbs: [list, watch, patch]
{{- end }}
{{- end }}

{{/* The Secret holding the key every cluster's Ray token is derived from; the operator makes it on first start. */}}
{{- define "bigmodel-operator.tokenKeySecret" -}}
{{ include "bigmodel-operator.fullname" . }}-token-key
{{- end }}

{{/*
Namespaces that get the fallback NetworkPolicy: those listed for it, else the watched ones, else the release namespace.
Returned as JSON because include can only return a string.
*/}}
{{- define "bigmodel-operator.networkPolicyNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/* GCS fault tolerance: the deployed Redis's name (its Deployment, Service, policy and generated Secret). */}}
{{- define "bigmodel-operator.gcsRedis" -}}
{{ include "bigmodel-operator.fullname" . }}-gcs-redis
{{- end }}

{{/* The Secret holding the Redis password: the one named, else the chart's own (deploy only). */}}
{{- define "bigmodel-operator.gcsRedisPasswordSecret" -}}
{{- $redis := .Values.gcsFaultTolerance.redis }}
{{- if $redis.passwordSecret.name }}{{ $redis.passwordSecret.name }}
{{- else if $redis.deploy }}{{ include "bigmodel-operator.gcsRedis" . }}
{{- else }}{{ fail "gcsFaultTolerance.redis.passwordSecret.name: required with an external Redis (deploy: false)" }}
{{- end }}
{{- end }}

{{/* Where the services' heads find Redis: the chart's Service, or the external address. */}}
{{- define "bigmodel-operator.gcsRedisAddress" -}}
{{- $redis := .Values.gcsFaultTolerance.redis }}
{{- if $redis.deploy }}{{ include "bigmodel-operator.gcsRedis" . }}.{{ .Release.Namespace }}.svc:6379
{{- else if $redis.address }}{{ $redis.address }}
{{- else }}{{ fail "gcsFaultTolerance.redis.address: required with an external Redis (deploy: false)" }}
{{- end }}
{{- end }}

{{/* The deployed Redis's pods: labels of their own, so that no selector of the operator's pods takes them in. */}}
{{- define "bigmodel-operator.gcsRedisSelectorLabels" -}}
app.kubernetes.io/name: bigmodel-gcs-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
