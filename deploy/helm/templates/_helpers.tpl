{{/*
Names, labels and the checks every template relies on.
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "netsy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every resource: fullnameOverride, else the release name when it already contains the
chart name, else "<release>-<chart>". The headless Service carries this name too, so pod DNS names
are "<fullname>-<i>.<fullname>.<namespace>.svc.<clusterDomain>".
*/}}
{{- define "netsy.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "netsy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods; they never change across upgrades. */}}
{{- define "netsy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "netsy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "netsy.labels" -}}
helm.sh/chart: {{ include "netsy.chart" . }}
{{ include "netsy.selectorLabels" . }}
app.kubernetes.io/version: {{ include "netsy.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: netsy
{{- end }}

{{- define "netsy.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "netsy.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "netsy.imageTag" .) }}
{{- end }}

{{- define "netsy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "netsy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Issuers of the CA chain. */}}
{{- define "netsy.selfSignedIssuer" -}}
{{- printf "%s-selfsigned" (include "netsy.fullname" .) }}
{{- end }}
{{- define "netsy.caIssuer" -}}
{{- printf "%s-ca" (include "netsy.fullname" .) }}
{{- end }}

{{- define "netsy.clientSecretName" -}}
{{- .Values.clientCertificate.secretName | default (printf "%s-client-%s" (include "netsy.fullname" .) .Values.clientCertificate.name) }}
{{- end }}

{{/* Host part of the DNS name of the pod whose name is given as "pod" (a literal or a variable reference). */}}
{{- define "netsy.podHost" -}}
{{- printf "%s.%s.%s.svc.%s" .pod (include "netsy.fullname" .root) .namespace .root.Values.clusterDomain }}
{{- end }}

{{/*
The cluster config as plain JSON: JSONC line and block comments and trailing commas removed.
Each regular expression matches a whole string literal first and puts it back unchanged, so
comment markers inside a string (an endpoint URL) are kept.
*/}}
{{- define "netsy.configJSON" -}}
{{- $s := toString .Values.config }}
{{- $s = regexReplaceAll `("(?:[^"\\]|\\.)*")|//[^\n]*|/\*(?s:.*?)\*/` $s "${1}" }}
{{- $s = regexReplaceAll `("(?:[^"\\]|\\.)*")|,(\s*[\]}])` $s "${1}${2}" }}
{{- $s }}
{{- end }}

{{/*
Checks that no schema can express; fails the render with a message naming the values involved.
Included by the ConfigMap and the StatefulSet, so any render of either runs it.
*/}}
{{- define "netsy.validate" -}}
{{- $cfg := include "netsy.configJSON" . | fromJson }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "netsy: config is not valid JSONC (comments and trailing commas are allowed): %s" (get $cfg "Error")) }}
{{- end }}
{{- if not (hasKey $cfg "cluster_id") }}
{{- fail (printf "netsy: config has no \"cluster_id\"; it must equal clusterID (%q)" .Values.clusterID) }}
{{- end }}
{{- $cid := get $cfg "cluster_id" }}
{{- if ne (toString $cid) (toString .Values.clusterID) }}
{{- fail (printf "netsy: clusterID (%q) does not match cluster_id in config (%q); set both to the same value" (toString .Values.clusterID) (toString $cid)) }}
{{- end }}
{{- $longest := printf "%s-%d" (include "netsy.fullname" .) (max 0 (sub (int .Values.replicas) 1)) }}
{{- if or (gt (len $longest) 32) (not (regexMatch `^[a-z0-9]+(-[a-z0-9]+)*$` $longest)) }}
{{- fail (printf "netsy: pod name %q is not a valid node id (at most 32 characters of [a-z0-9-], no leading, trailing or double hyphen); choose a shorter release name or set fullnameOverride" $longest) }}
{{- end }}
{{- end }}
