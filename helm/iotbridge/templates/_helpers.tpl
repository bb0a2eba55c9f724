{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "iotbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release name plus chart name, unless the release already has it. */}}
{{- define "iotbridge.fullname" -}}
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

{{- define "iotbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iotbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iotbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "iotbridge.labels" -}}
helm.sh/chart: {{ include "iotbridge.chart" . }}
{{ include "iotbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Secret holding the passwords: the user's existing one or the chart's. */}}
{{- define "iotbridge.secretName" -}}
{{- default (include "iotbridge.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* "true" when the pods have a password Secret to mount. */}}
{{- define "iotbridge.hasSecret" -}}
{{- if or .Values.existingSecret .Values.mqtt.password .Values.sensaphone.password }}true{{ end }}
{{- end }}

{{/* The shared subscription group: explicit, or "iotbridge" as soon as there are replicas to share. */}}
{{- define "iotbridge.sharedGroup" -}}
{{- if .Values.mqtt.sharedGroup }}
{{- .Values.mqtt.sharedGroup }}
{{- else if gt (int .Values.replicas) 1 }}
{{- "iotbridge" }}
{{- end }}
{{- end }}

{{- define "iotbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
