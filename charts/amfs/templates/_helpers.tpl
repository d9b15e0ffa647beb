{{/*
Names. Object names are limited to 63 characters because some of them become
label values and DNS labels.
*/}}
{{- define "amfs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "amfs.fullname" -}}
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

{{- define "amfs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<fullname>-<suffix>" within 63 characters: the prefix is shortened, the suffix
kept whole. Call with (dict "ctx" $ "suffix" "operator").
*/}}
{{- define "amfs.suffixed" -}}
{{- $prefix := include "amfs.fullname" .ctx | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .suffix }}
{{- end }}

{{- define "amfs.operatorName" -}}
{{- include "amfs.suffixed" (dict "ctx" . "suffix" "operator") }}
{{- end }}

{{- define "amfs.webhookServiceName" -}}
{{- include "amfs.suffixed" (dict "ctx" . "suffix" "webhook") }}
{{- end }}

{{- define "amfs.metricsServiceName" -}}
{{- include "amfs.suffixed" (dict "ctx" . "suffix" "metrics") }}
{{- end }}

{{- define "amfs.webhookConfigurationName" -}}
{{- include "amfs.suffixed" (dict "ctx" . "suffix" "sidecar-injector") }}
{{- end }}

{{- define "amfs.webhookSecretName" -}}
{{- .Values.webhook.certificate.secretName | default (include "amfs.suffixed" (dict "ctx" . "suffix" "webhook-tls")) }}
{{- end }}

{{- define "amfs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "amfs.operatorName" .) }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference; the sidecar runs the same image unless sidecar.image says otherwise.
*/}}
{{- define "amfs.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "amfs.sidecarImage" -}}
{{- .Values.sidecar.image | default (include "amfs.image" .) }}
{{- end }}

{{/*
Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "amfs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "amfs.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "amfs.labels" -}}
{{ include "amfs.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Values.image.tag | default .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: amfs
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "amfs.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The kopf handler id of the injection webhook; kopf routes an admission request
to the handler whose id is the request's URL path (amfs_operator.webhook.HANDLER_ID).
*/}}
{{- define "amfs.webhookPath" -}}
/amfs-inject-sidecar
{{- end }}

{{/* Namespaces the webhook never touches: the configured ones and the release's own. */}}
{{- define "amfs.excludedNamespaces" -}}
{{- $namespaces := concat .Values.webhook.excludeNamespaces (list .Release.Namespace) | uniq }}
{{- toJson $namespaces }}
{{- end }}
