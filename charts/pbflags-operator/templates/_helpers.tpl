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
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["configmaps", "secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
