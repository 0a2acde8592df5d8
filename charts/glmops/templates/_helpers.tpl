{{/* Names and labels shared by every template. */}}

{{- define "glmops.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it already says glmops. */}}
{{- define "glmops.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "glmops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "glmops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "glmops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "glmops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: glmops
{{- end }}

{{- define "glmops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "glmops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "glmops.leaseName" -}}
{{- default (include "glmops.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "glmops.image" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{/*
What the operator does in a namespace it serves: every request of glmops.kube and of kopf's
watches, by resource, with the verbs it uses and nothing more. Secrets: `get` only, for
existence checks that ask for metadata (PartialObjectMetadata); never list or watch.
*/}}
{{- define "glmops.workloadRules" -}}
# FineTuneJobs, ModelDeployments and SyntheticDatasets: watched by kopf; patched for kopf's
# progress annotations.
- apiGroups: ["glmops.io"]
  resources: ["finetunejobs", "modeldeployments", "syntheticdatasets"]
  verbs: ["get", "list", "watch", "patch"]
# Their status: the operator's conditional status writes (merge patches).
- apiGroups: ["glmops.io"]
  resources: ["finetunejobs/status", "modeldeployments/status", "syntheticdatasets/status"]
  verbs: ["patch"]
# Trainer, export, model download and generator Jobs: created once, observed, deleted on cancel.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Pods of those Jobs and of serving Deployments: observed only (no exec, no logs).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Serving Deployments: server-side apply (create + patch), observed.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The ReplicaSets of a serving Deployment: which version serves.
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["list"]
# Serving Services (server-side apply) and multi-node trainers' headless Services.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
# PVCs: existence checks; model download claims created and, after a rollout, deleted.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "create", "delete"]
# Secrets: existence checks only (metadata is asked for; values are never read).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events about the glmops resources (the operator's and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
