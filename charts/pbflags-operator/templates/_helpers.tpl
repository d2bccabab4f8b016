{{- define "pbflags-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pbflags-operator.labels" -}}
app.kubernetes.io/name: pbflags-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pbflags-operator.selector" -}}
app.kubernetes.io/name: pbflags-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pbflags-operator.serviceAccountName" -}}
{{- default (include "pbflags-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- /* The rules the operator needs in a namespace it manages. */ -}}
{{- define "pbflags-operator.rules" -}}
- apiGroups: ["pbflags.dev"]
  resources: ["flagevaluators"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["pbflags.dev"]
  resources: ["flagevaluators/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# NetworkPolicies: the one closing a root's admin port (spec.root.admin).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# No Secrets: the database URL, its CA and the TLS pair reach the evaluator pods as mounted files;
# the operator never reads them. A pod that cannot mount one is reported from its events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
# ConfigMaps: read the users' descriptor sets; write the published copies and the candidates
# their checks read.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Pods: read the termination message of descriptor-check Jobs (why a set was refused); annotate
# evaluator pods when a new descriptor set is published, so their kubelet refreshes the ConfigMap
# volume at once; list and watch them (address, readiness) to ask each which set it serves, over
# the pod network (GET /descriptors on the evaluator port), for status.descriptors, and to read a
# check's outcome as soon as its pod reports it.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
