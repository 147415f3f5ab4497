{{/*
Names. Kubernetes limits most names (and label values) to 63 characters; each name here is
cut to 63 after its suffix is added, and a trailing "-" left by the cut is removed.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "helios.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "helios.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's objects: Deployment, Role/ClusterRole and binding. */}}
{{- define "helios.operator.fullname" -}}
{{- printf "%s-operator" (include "helios.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The worker monitors (PodMonitor, ServiceMonitor). */}}
{{- define "helios.worker.fullname" -}}
{{- printf "%s-worker" (include "helios.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The dashboard ConfigMap. */}}
{{- define "helios.dashboard.fullname" -}}
{{- printf "%s-dashboard" (include "helios.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "helios.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "helios.operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "helios.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; "component" is passed as .component. */}}
{{- define "helios.labels" -}}
helm.sh/chart: {{ include "helios.chart" .context }}
{{ include "helios.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: helios
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "helios.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helios.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* "repository:tag" or "repository@digest"; the tag defaults to the chart's appVersion. */}}
{{- define "helios.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces a namespaced operator watches (a YAML list): operator.watchNamespaces or the release's. */}}
{{- define "helios.watchNamespaces" -}}
{{- toYaml (default (list .Release.Namespace) .Values.operator.watchNamespaces) -}}
{{- end -}}
