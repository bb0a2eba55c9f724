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

{{/* Where a site's Sensaphone password (sitePasswords.<name>) is mounted, and its file there. */}}
{{- define "iotbridge.sitesDir" -}}
/etc/iotbridge/sites
{{- end }}

{{- define "iotbridge.sitePasswordPath" -}}
{{- printf "%s/sensaphone-password" . }}
{{- end }}

{{/* The Secret holding a site's password: the user's existingSecret, or the chart's own
<fullname>-site-<name>, the name in lower case with "-" for "_" as Kubernetes names want.
Called with (list $ name entry). */}}
{{- define "iotbridge.siteSecretName" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $entry := index . 2 }}
{{- if $entry.existingSecret }}
{{- $entry.existingSecret }}
{{- else }}
{{- $suffix := $name | lower | replace "_" "-" }}
{{- regexReplaceAll "-+$" (printf "%s-site-%s" (include "iotbridge.fullname" $root) $suffix) "" }}
{{- end }}
{{- end }}

{{/* The key of a site's password in its Secret (an entry of sitePasswords). */}}
{{- define "iotbridge.siteSecretKey" -}}
{{- if .existingSecret }}
{{- default "sensaphone-password" .key }}
{{- else }}
{{- "sensaphone-password" }}
{{- end }}
{{- end }}

{{/* The bridge's config file: the config value, with sensaphone.password_file of each site in
sitePasswords pointing at its mounted password. A password written into config.sites, or one
given for a site config.sites does not have, fails the render: the schema says so too, but a
render with --skip-schema-validation must not put a password in the ConfigMap either. */}}
{{- define "iotbridge.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $byName := dict }}
{{- range $i, $site := (get $config "sites" | default list) }}
{{- $sensaphone := get $site "sensaphone" }}
{{- if and (kindIs "map" $sensaphone) (hasKey $sensaphone "password") }}
{{- fail (printf "config.sites[%d].sensaphone.password: the ConfigMap is no place for a password; give it as sitePasswords.%v.password (or existingSecret)" $i $site.name) }}
{{- end }}
{{- $_ := set $byName (toString $site.name) $site }}
{{- end }}
{{- range $name, $entry := .Values.sitePasswords }}
{{- $site := get $byName $name }}
{{- if not $site }}
{{- fail (printf "sitePasswords.%s: config.sites has no site named %q" $name $name) }}
{{- end }}
{{- $sensaphone := get $site "sensaphone" }}
{{- if not (kindIs "map" $sensaphone) }}
{{- fail (printf "sitePasswords.%s: site %q in config.sites has no sensaphone section; give it one (its user, at least)" $name $name) }}
{{- end }}
{{- if hasKey $sensaphone "password_file" }}
{{- fail (printf "sitePasswords.%s: site %q in config.sites sets sensaphone.password_file too; the chart sets it, so leave it out" $name $name) }}
{{- end }}
{{- $_ := set $sensaphone "password_file" (printf "%s/%s" (include "iotbridge.sitesDir" $) (include "iotbridge.sitePasswordPath" $name)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}
