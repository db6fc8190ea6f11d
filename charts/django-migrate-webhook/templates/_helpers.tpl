{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "django-migrate-webhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "django-migrate-webhook.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "django-migrate-webhook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "django-migrate-webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "django-migrate-webhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "django-migrate-webhook.labels" -}}
helm.sh/chart: {{ include "django-migrate-webhook.chart" . }}
{{ include "django-migrate-webhook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "django-migrate-webhook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "django-migrate-webhook.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the serving certificate. */}}
{{- define "django-migrate-webhook.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" }}
{{- required "tls.secret.name is required when tls.mode is secret" .Values.tls.secret.name }}
{{- else }}
{{- printf "%s-tls" (include "django-migrate-webhook.fullname" .) }}
{{- end }}
{{- end }}

{{/* The DNS names the API server uses for the Service. */}}
{{- define "django-migrate-webhook.dnsNames" -}}
{{- $svc := include "django-migrate-webhook.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/*
"true" when opted-in Argo Rollouts are injected (injection.argoRollouts, `auto`: when the
cluster serves the Rollout CRD), else empty.
*/}}
{{- define "django-migrate-webhook.argoRollouts" -}}
{{- $v := .Values.injection.argoRollouts -}}
{{- if or (eq (toString $v) "true") (and (eq (toString $v) "auto") (.Capabilities.APIVersions.Has "argoproj.io/v1alpha1/Rollout")) -}}
true
{{- end -}}
{{- end }}

{{/*
The workloads the injection applies to, as admission rules: the webhook configuration's.
*/}}
{{- define "django-migrate-webhook.rules" -}}
- apiGroups: ["apps"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["deployments", "statefulsets"]
  scope: Namespaced
- apiGroups: ["batch"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["jobs", "cronjobs"]
  scope: Namespaced
{{- if include "django-migrate-webhook.argoRollouts" . }}
- apiGroups: ["argoproj.io"]
  apiVersions: ["v1alpha1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["rollouts"]
  scope: Namespaced
{{- end }}
{{- end }}
